package dev.pocketlm

import java.util.Collections
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.concurrent.thread
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking
import org.junit.AfterClass
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotEquals
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.BeforeClass
import org.junit.Test

/**
 * The Kotlin API on a JVM, against the host-built library and the real default model
 * (POCKETLM_MODEL_DIR, set by tests/kotlin.sh).
 */
class PocketModelTest {
    companion object {
        private lateinit var model: PocketModel
        private val modelDir: String = System.getenv("POCKETLM_MODEL_DIR") ?: error("set POCKETLM_MODEL_DIR")
        private val greedy = GenerationParams(maxTokens = 24u, temperature = 0f)
        private const val QUESTION = "What is the capital of France?"

        @BeforeClass
        @JvmStatic
        fun load() {
            model = PocketModel.load(LoadOptions(modelDir, threads = 2u, contextSize = 1024u))
        }

        @AfterClass
        @JvmStatic
        fun free() = model.close()
    }

    /** Records a stream's calls in order, with the thread each arrived on. */
    private class Recorder : GenerationListener {
        val events: MutableList<String> = Collections.synchronizedList(mutableListOf())
        val threads: MutableSet<Thread> = Collections.synchronizedSet(mutableSetOf())
        val done = CountDownLatch(1)
        val firstToken = CountDownLatch(1)
        @Volatile var completion: Completion? = null
        @Volatile var error: PocketException? = null

        override fun onToken(text: String) {
            threads.add(Thread.currentThread())
            events.add("token:$text")
            firstToken.countDown()
        }

        override fun onComplete(completion: Completion) {
            threads.add(Thread.currentThread())
            events.add("complete")
            this.completion = completion
            done.countDown()
        }

        override fun onError(error: PocketException) {
            threads.add(Thread.currentThread())
            events.add("error")
            this.error = error
            done.countDown()
        }

        fun await() = assertTrue("stream did not end within 60 s", done.await(60, TimeUnit.SECONDS))
        fun text() = events.filter { it.startsWith("token:") }.joinToString("") { it.removePrefix("token:") }
    }

    @Test
    fun anInt8KvCacheHoldsAConversationInAboutHalfTheMemory() {
        fun bytesPerToken(chat: ChatSession) = chat.cacheBytes().toDouble() / chat.tokenCount().toDouble()
        val f16 = model.chat(null).use { chat -> chat.send(QUESTION, greedy); bytesPerToken(chat) }
        PocketLM.withModel(modelDir, threads = 2u, contextSize = 1024u, kvCache = KvCache.Q8) { q8Model ->
            assertEquals(KvCache.Q8, q8Model.info().kvCache)
            q8Model.chat(null).use { chat ->
                val reply = chat.send(QUESTION, greedy)
                assertTrue(reply.text, reply.text.contains("Paris"))
                // Head dim 64: 64 int8 values and one f32 scale against 64 f16 values.
                assertEquals(f16 * (64 + 4) / 128, bytesPerToken(chat), 1e-9)
            }
        }
    }

    @Test
    fun loadsAndDescribesTheModel() {
        val info = model.info()
        assertEquals("SmolLM2-135M-Instruct", info.modelId)
        assertEquals(1024u, info.contextSize)
        assertEquals(8192u, info.contextLength)
        assertEquals(30u, info.numLayers)
        assertEquals(49152u, info.vocabSize)
        assertEquals(KvCache.F16, info.kvCache)
        assertEquals(2u, info.threads)
        assertTrue(info.weightBytesPerToken > 50_000_000u)
    }

    @Test
    fun generatesAnAnswer() {
        val c = model.generate(QUESTION, greedy)
        assertTrue("answer: ${c.text}", c.text.contains("Paris"))
        assertTrue(c.completionTokens in 1u..24u)
        assertTrue(c.promptTokens > 5u)
        assertTrue(c.finishReason == FinishReason.END_OF_TEXT || c.finishReason == FinishReason.MAX_TOKENS)
        assertEquals("greedy is deterministic", c.text, model.generate(QUESTION, greedy).text)
    }

    @Test
    fun streamsTokensInOrderOffTheCallerThread() {
        val r = Recorder()
        model.generateStream(QUESTION, greedy, r).use { r.await() }
        assertEquals("complete", r.events.last())
        assertEquals(1, r.events.count { it == "complete" || it == "error" })
        assertTrue(r.events.size > 2)
        assertEquals(r.completion!!.text, r.text())
        assertEquals(model.generate(QUESTION, greedy).text, r.text())
        assertTrue(Thread.currentThread() !in r.threads)
    }

    @Test
    fun cancelStopsAStreamMidway() {
        val r = Recorder()
        val params = GenerationParams(maxTokens = 400u, temperature = 0f, stop = listOf())
        val handle = model.generateStream("Write a long story about a lighthouse keeper.", params, r)
        assertTrue(r.firstToken.await(60, TimeUnit.SECONDS))
        handle.cancel()
        r.await()
        handle.close()
        assertEquals(FinishReason.CANCELLED, r.completion!!.finishReason)
        assertTrue("stopped after ${r.completion!!.completionTokens} tokens", r.completion!!.completionTokens < 400u)
        assertEquals(r.completion!!.text, r.text())
    }

    @Test
    fun closingTheHandleCancelsTheStream() {
        val r = Recorder()
        val handle = model.generateStream("Count from one to one thousand in words.", GenerationParams(maxTokens = 400u), r)
        assertTrue(r.firstToken.await(60, TimeUnit.SECONDS))
        handle.close()
        r.await()
        assertEquals(FinishReason.CANCELLED, r.completion!!.finishReason)
    }

    @Test
    fun errorsBecomeExceptions() {
        assertThrows(PocketException.Model::class.java) { PocketModel.load(LoadOptions("/nonexistent/model")) }
        assertThrows(PocketException.InvalidInput::class.java) {
            model.generate(QUESTION, GenerationParams(temperature = -1f))
        }
        assertThrows(PocketException.InvalidInput::class.java) { model.generate(QUESTION, GenerationParams(maxTokens = 0u)) }
        assertThrows(PocketException.InvalidInput::class.java) {
            PocketModel.load(LoadOptions(modelDir, contextSize = 1_000_000u))
        }
        val long = "The quick brown fox jumps over the lazy dog. ".repeat(200)
        val e = assertThrows(PocketException.ContextOverflow::class.java) { model.summarize(long, greedy) }
        assertEquals(1024uL, e.limit)
        assertTrue(e.needed > 1024uL)
    }

    @Test
    fun streamFailuresArriveAsOnError() {
        val r = Recorder()
        model.summarizeStream("word ".repeat(3000), greedy, r).use { r.await() }
        assertEquals(listOf("error"), r.events)
        assertTrue(r.error is PocketException.ContextOverflow)
    }

    @Test
    fun aListenerThatThrowsEndsTheStreamWithAnInternalError() {
        val r = Recorder()
        val throwing = object : GenerationListener by r {
            override fun onToken(text: String): Unit = throw IllegalStateException("app bug")
        }
        model.generateStream(QUESTION, greedy, throwing).use { r.await() }
        assertEquals(listOf("error"), r.events)
        assertTrue("got ${r.error}", r.error is PocketException.Internal)
    }

    @Test
    fun chatKeepsTheConversation() {
        model.chat("You are a helpful assistant.").use { chat ->
            chat.send("My name is Ada.", greedy)
            val before = chat.tokenCount()
            chat.send("What is my name?", greedy)
            assertTrue(chat.tokenCount() > before)
            val messages = chat.messages()
            assertEquals(listOf(ChatRole.SYSTEM, ChatRole.USER, ChatRole.ASSISTANT, ChatRole.USER, ChatRole.ASSISTANT), messages.map { it.role })
            assertEquals("What is my name?", messages[3].content)
        }
    }

    @Test
    fun twoChatsOnTwoThreadsShareOneModel() {
        val questions = listOf(QUESTION, "Name a colour of the sky.")
        val expected = questions.map { q -> model.chat(null).use { it.send(q, greedy).text } }
        val results = arrayOfNulls<String>(2)
        val threads = questions.mapIndexed { i, q ->
            thread { model.chat(null).use { results[i] = it.send(q, greedy).text } }
        }
        threads.forEach { it.join(120_000) }
        assertEquals(expected, results.toList())
        assertNotEquals(expected[0], expected[1])
    }

    @Test
    fun flowStreamsTheSameText() = runBlocking {
        val pieces = model.generateFlow(QUESTION, greedy).toList()
        assertTrue(pieces.size > 1)
        assertEquals(model.generate(QUESTION, greedy).text, pieces.joinToString(""))
    }

    @Test
    fun flowFailsWithThePocketException() {
        assertThrows(PocketException.ContextOverflow::class.java) {
            runBlocking { model.summarizeFlow("word ".repeat(3000), greedy).toList() }
        }
    }

    @Test
    fun cancellingTheFlowCancelsTheReply() = runBlocking {
        model.chat(null).use { chat ->
            val params = GenerationParams(maxTokens = 400u, temperature = 0f)
            val pieces = chat.sendFlow("Write a long story about a lighthouse keeper.", params).take(3).toList()
            assertEquals(3, pieces.size)
            // messages() waits for the cancelled reply to end; it is kept as far as it got.
            val reply = chat.messages().last()
            assertEquals(ChatRole.ASSISTANT, reply.role)
            assertTrue("reply ran on: ${reply.content.length} chars", reply.content.length < 200)
            assertTrue(reply.content.startsWith(pieces.joinToString("")))
        }
    }

    @Test
    fun withModelFreesTheModelAfterUse() {
        val id = PocketLM.withModel(modelDir, threads = 1u) { it.info().modelId }
        assertEquals("SmolLM2-135M-Instruct", id)
    }
}
