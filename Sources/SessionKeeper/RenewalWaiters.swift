import Foundation
import Synchronization

/// Callers waiting for renewal outcomes, per context. A waiter whose task is cancelled leaves at once with a
/// `cancelled` failure (the renewal itself goes on): no wait of a caller outlives its task.
final class RenewalWaiters: Sendable {
    typealias Outcome = Result<SessionInfo, RenewalError>
    private let state = Mutex<(next: Int, waiting: [String: [Int: CheckedContinuation<Outcome, Never>]])>((0, [:]))

    func wait(for name: String) async -> Outcome {
        let id = state.withLock { state in
            state.next += 1
            return state.next
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let cancelled = state.withLock { state -> Bool in
                    if Task.isCancelled { return true }
                    state.waiting[name, default: [:]][id] = continuation
                    return false
                }
                if cancelled { continuation.resume(returning: Self.cancelled) }
            }
        } onCancel: {
            state.withLock { $0.waiting[name]?.removeValue(forKey: id) }?.resume(returning: Self.cancelled)
        }
    }

    static var cancelled: Outcome { .failure(RenewalError(.retryable, "the wait was cancelled", code: .cancelled)) }

    func resume(_ name: String, with outcome: Outcome) {
        for waiter in state.withLock({ $0.waiting.removeValue(forKey: name) ?? [:] }).values { waiter.resume(returning: outcome) }
    }

    func resumeAll(with outcome: Outcome) {
        let all = state.withLock { state in
            defer { state.waiting = [:] }
            return state.waiting.values.flatMap(\.values)
        }
        for waiter in all { waiter.resume(returning: outcome) }
    }
}
