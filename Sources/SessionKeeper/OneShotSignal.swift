import Synchronization

/// Fires once, or fails once; `fired()` returns (or throws) at once after that. For "restored", "listening" and
/// similar milestones. A wait honours cancellation (swift-service-lifecycle's `CancellationWaiter` is the
/// model): a daemon shutting down while it waits for a milestone that never comes still shuts down.
public final class OneShotSignal: Sendable {
    /// The milestone will not be reached (what should have reached it failed).
    public struct Failed: Error, Sendable {}

    private enum State {
        case waiting(next: Int, waiters: [Int: CheckedContinuation<Void, any Error>])
        case fired
        case failed
    }

    private let state = Mutex(State.waiting(next: 0, waiters: [:]))

    public init() {}

    public var hasFired: Bool {
        state.withLock { if case .fired = $0 { true } else { false } }
    }

    public func fire() { settle(.fired) }

    /// The milestone will never be reached: every waiter (now and later) gets `Failed`.
    public func fail() { settle(.failed) }

    private func settle(_ outcome: State) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            guard case .waiting(_, let waiters) = state else { return [] }
            state = outcome
            return Array(waiters.values)
        }
        for waiter in waiters {
            if case .fired = outcome { waiter.resume() } else { waiter.resume(throwing: Failed()) }
        }
    }

    /// Returns once fired; throws `Failed` once failed, `CancellationError` when the waiting task is cancelled.
    public func fired() async throws {
        let id = state.withLock { state -> Int? in
            guard case .waiting(let next, let waiters) = state else { return nil }
            state = .waiting(next: next + 1, waiters: waiters)
            return next
        }
        guard let id else { return try outcome() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow: Result<Void, any Error>? = state.withLock { state in
                    switch state {
                    case .waiting(let next, var waiters):
                        if Task.isCancelled { return .failure(CancellationError()) }
                        waiters[id] = continuation
                        state = .waiting(next: next, waiters: waiters)
                        return nil
                    case .fired: return .success(())
                    case .failed: return .failure(Failed())
                    }
                }
                if let resumeNow { continuation.resume(with: resumeNow) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard case .waiting(let next, var waiters) = state else { return nil }
                let waiter = waiters.removeValue(forKey: id)
                state = .waiting(next: next, waiters: waiters)
                return waiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    private func outcome() throws {
        try state.withLock { state in
            if case .failed = state { throw Failed() }
        }
    }
}
