import Synchronization

/// Fires once; `wait()` returns at once after that. For "restored", "listening" and similar milestones.
public final class OneShotSignal: Sendable {
    private let waiters = Mutex<[CheckedContinuation<Void, Never>]?>([])

    public init() {}

    public var hasFired: Bool { waiters.withLock { $0 == nil } }

    public func fire() {
        for waiter in waiters.withLock({ waiters in defer { waiters = nil }; return waiters ?? [] }) { waiter.resume() }
    }

    public func wait() async {
        await withCheckedContinuation { continuation in
            let fired = waiters.withLock { waiters -> Bool in
                guard waiters != nil else { return true }
                waiters?.append(continuation)
                return false
            }
            if fired { continuation.resume() }
        }
    }
}
