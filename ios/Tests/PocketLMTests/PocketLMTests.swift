// XCTest for the Swift API: run on a Mac with `swift test` after `cargo xtask ios`, with
// POCKETLM_MODEL_DIR naming a converted model (`pocketlm fetch` prints one).

import XCTest
@testable import PocketLM

final class PocketLMTests: XCTestCase {
    private static var model: PocketModel!
    private let greedy = GenerationParams(maxTokens: 24, temperature: 0)
    private let question = "What is the capital of France?"

    override class func setUp() {
        super.setUp()
        let dir = ProcessInfo.processInfo.environment["POCKETLM_MODEL_DIR"]!
        model = try! PocketModel.load(options: LoadOptions(modelDir: dir, threads: 2, contextSize: 1024))
    }

    func testGeneratesAnAnswer() throws {
        let completion = try Self.model.generate(prompt: question, params: greedy)
        XCTAssertTrue(completion.text.contains("Paris"), completion.text)
        XCTAssertEqual(Self.model.info().contextSize, 1024)
    }

    func testAsyncStreamYieldsTheSameText() async throws {
        var pieces: [String] = []
        for try await piece in Self.model.answer(question, params: greedy) {
            pieces.append(piece)
        }
        XCTAssertGreaterThan(pieces.count, 1)
        XCTAssertEqual(pieces.joined(), try Self.model.generate(prompt: question, params: greedy).text)
    }

    func testBreakingOutOfTheStreamCancelsTheReply() async throws {
        let chat = try Self.model.chat(system: nil)
        var count = 0
        for try await _ in chat.reply(to: "Write a long story.", params: GenerationParams(maxTokens: 400, temperature: 0)) {
            count += 1
            if count == 3 { break }
        }
        let reply = chat.messages().last!
        XCTAssertEqual(reply.role, .assistant)
        XCTAssertLessThan(reply.content.count, 200)
    }

    func testAnInt8KvCacheHoldsAConversationInAboutHalfTheMemory() throws {
        func bytesPerToken(_ chat: ChatSession) -> Double { Double(chat.cacheBytes()) / Double(chat.tokenCount()) }
        let f16Chat = try Self.model.chat(system: nil)
        _ = try f16Chat.send(message: question, params: greedy)
        let dir = ProcessInfo.processInfo.environment["POCKETLM_MODEL_DIR"]!
        let q8Model = try PocketModel.load(options: LoadOptions(modelDir: dir, threads: 2, contextSize: 1024, kvCache: .q8))
        XCTAssertEqual(q8Model.info().kvCache, .q8)
        let q8Chat = try q8Model.chat(system: nil)
        let reply = try q8Chat.send(message: question, params: greedy)
        XCTAssertTrue(reply.text.contains("Paris"), reply.text)
        // Head dim 64: 64 int8 values and one f32 scale against 64 f16 values.
        XCTAssertEqual(bytesPerToken(q8Chat), bytesPerToken(f16Chat) * 68 / 128, accuracy: 1e-9)
    }

    func testErrorsAreThrown() {
        XCTAssertThrowsError(try PocketModel.load(options: LoadOptions(modelDir: "/nonexistent"))) { error in
            guard case PocketError.Model = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try Self.model.generate(prompt: question, params: GenerationParams(temperature: -1))) { error in
            guard case PocketError.InvalidInput = error else { return XCTFail("\(error)") }
        }
    }

    func testStreamErrorsAreThrownByTheSequence() async {
        do {
            for try await _ in Self.model.summary(of: String(repeating: "word ", count: 3000), params: greedy) {}
            XCTFail("expected ContextOverflow")
        } catch PocketError.ContextOverflow(let needed, let limit) {
            XCTAssertGreaterThan(needed, limit)
        } catch {
            XCTFail("\(error)")
        }
    }
}
