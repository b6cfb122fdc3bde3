// Hand-written Swift sugar over the generated bindings (Generated/PocketLM.swift): streaming as
// AsyncThrowingStream. Ending the consuming task (or the stream) cancels the generation.

import Foundation

/// Forwards a stream's listener calls into an AsyncThrowingStream continuation.
private final class ContinuationListener: GenerationListener, @unchecked Sendable {
    private let continuation: AsyncThrowingStream<String, Error>.Continuation

    init(_ continuation: AsyncThrowingStream<String, Error>.Continuation) {
        self.continuation = continuation
    }

    func onToken(text: String) {
        continuation.yield(text)
    }

    func onComplete(completion: Completion) {
        continuation.finish()
    }

    func onError(error: PocketError) {
        continuation.finish(throwing: error)
    }
}

/// Starts a stream with a listener feeding the returned sequence; terminating the sequence
/// cancels and releases the stream's handle.
private func textStream(_ start: @escaping (GenerationListener) throws -> GenerationHandle)
    -> AsyncThrowingStream<String, Error>
{
    AsyncThrowingStream { continuation in
        do {
            let handle = try start(ContinuationListener(continuation))
            continuation.onTermination = { _ in handle.cancel() }
        } catch {
            continuation.finish(throwing: error)
        }
    }
}

extension PocketModel {
    /// The answer to `prompt` as text pieces, generated on a pocketlm thread.
    public func answer(_ prompt: String, params: GenerationParams = GenerationParams())
        -> AsyncThrowingStream<String, Error>
    {
        textStream { try self.generateStream(prompt: prompt, params: params, listener: $0) }
    }

    /// A summary of `text` as text pieces.
    public func summary(of text: String, params: GenerationParams = GenerationParams())
        -> AsyncThrowingStream<String, Error>
    {
        textStream { try self.summarizeStream(text: text, params: params, listener: $0) }
    }
}

extension ChatSession {
    /// The reply to `message` as text pieces; the turn is kept in the conversation.
    public func reply(to message: String, params: GenerationParams = GenerationParams())
        -> AsyncThrowingStream<String, Error>
    {
        textStream { try self.sendStream(message: message, params: params, listener: $0) }
    }
}
