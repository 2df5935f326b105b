import Synchronization
import Timekeeping

/// A clock the test moves by hand: sleepers wake when `advance` passes their deadline (or when cancelled).
public final class ManualClock: Clock, Sendable {
    /// Time since the clock was made (the same instants as the daemon's `AnyClock`).
    public typealias Instant = AnyClock.Instant

    private struct State {
        var now = Instant(offset: .zero)
        var nextId = 0
        var sleepers: [Int: (deadline: Instant, continuation: CheckedContinuation<Void, any Error>)] = [:]
    }

    private let state = Mutex(State())

    public init() {}
    public var now: Instant { state.withLock { $0.now } }
    /// How many sleep now.
    public var sleeping: Int { state.withLock { $0.sleepers.count } }
    public var minimumResolution: Duration { .nanoseconds(1) }

    public func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        let id = state.withLock { state in
            state.nextId += 1
            return state.nextId
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                // A cancelled sleep throws, as ContinuousClock's does: a timer sequence ends on it instead of
                // ticking on at the same instant.
                let resumeNow: Result<Void, any Error>? = state.withLock { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if deadline <= state.now { return .success(()) }
                    state.sleepers[id] = (deadline, continuation)
                    return nil
                }
                if let resumeNow { continuation.resume(with: resumeNow) }
            }
        } onCancel: {
            let sleeper = state.withLock { $0.sleepers.removeValue(forKey: id) }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    public func advance(by duration: Duration) {
        let due = state.withLock { state in
            state.now = state.now.advanced(by: duration)
            let due = state.sleepers.filter { $0.value.deadline <= state.now }
            for id in due.keys { state.sleepers[id] = nil }
            return due.values.map(\.continuation)
        }
        for continuation in due { continuation.resume() }
    }
}

extension ManualClock {
    /// This clock as the daemon's logic takes it.
    public var erased: AnyClock { AnyClock(self) }
}
