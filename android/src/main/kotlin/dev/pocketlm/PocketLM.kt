package dev.pocketlm

import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow

/**
 * Hand-written Kotlin sugar over the generated bindings (`dev.pocketlm.PocketModel`,
 * `ChatSession`, ...): `Flow<String>` streaming and scoped (`AutoCloseable`) use.
 */
object PocketLM {
    init {
        // On Android, loading through System.loadLibrary runs JNI_OnLoad (keeps the JavaVM, routes
        // Rust logs to logcat); JNA then finds the library already loaded. On a desktop JVM, JNA
        // loads it from jna.library.path.
        if (System.getProperty("java.vm.vendor")?.contains("Android") == true) {
            System.loadLibrary("pocketlm_ffi")
        }
    }

    /**
     * Loads the model in [modelDir], runs [block] with it and frees it afterwards, also when
     * [block] throws. `threads` 0 = this device's cores (at most 4); `contextSize` 0 = the model's;
     * [kvCache] the element type of each conversation's KV cache (null: [KvCache.F16]; [KvCache.Q8]:
     * about half the memory).
     */
    inline fun <T> withModel(
        modelDir: String,
        threads: UInt = 0u,
        contextSize: UInt = 0u,
        kvCache: KvCache? = null,
        block: (PocketModel) -> T,
    ): T = PocketModel.load(LoadOptions(modelDir, threads, contextSize, kvCache)).use(block)
}

/**
 * The text of a stream as a cold [Flow]: collecting starts the generation (on a pocketlm thread),
 * the flow completes when it ends, fails with its [PocketException], and cancelling the collector
 * cancels the generation.
 */
internal fun streamFlow(start: (GenerationListener) -> GenerationHandle): Flow<String> = callbackFlow {
    val listener = object : GenerationListener {
        override fun onToken(text: String) {
            trySend(text) // the buffer is unlimited: never drops, never blocks the pocketlm thread
        }

        override fun onComplete(completion: Completion) {
            channel.close()
        }

        override fun onError(error: PocketException) {
            channel.close(error)
        }
    }
    val handle = start(listener)
    awaitClose {
        handle.cancel()
        handle.close()
    }
}.buffer(Channel.UNLIMITED)

/** [PocketModel.generate]'s answer as a [Flow] of text pieces. */
fun PocketModel.generateFlow(prompt: String, params: GenerationParams = GenerationParams()): Flow<String> =
    streamFlow { generateStream(prompt, params, it) }

/** [PocketModel.summarize]'s summary as a [Flow] of text pieces. */
fun PocketModel.summarizeFlow(text: String, params: GenerationParams = GenerationParams()): Flow<String> =
    streamFlow { summarizeStream(text, params, it) }

/** [ChatSession.send]'s reply as a [Flow] of text pieces. */
fun ChatSession.sendFlow(message: String, params: GenerationParams = GenerationParams()): Flow<String> =
    streamFlow { sendStream(message, params, it) }
