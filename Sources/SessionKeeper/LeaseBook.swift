import Foundation
import Synchronization
import Timekeeping

/// The leases this daemon holds, as the last lease round left them, with the moment (on the monotonic clock) each
/// stops counting here. That moment comes before the store's own expiry of the lease, so a daemon that was paused
/// (SIGSTOP, a VM freeze) or cut off finds its leases gone when it resumes, before it calls bunq, whatever its wall
/// clock says; the store's fencing refuses whatever write still slips through.
public final class LeaseBook: Sendable {
    private struct Held {
        let fence: Int64
        let until: AnyClock.Instant
        /// When it was granted outside a round (a context created here), so a round already under way keeps it.
        let grantedAt: AnyClock.Instant?
    }

    private let held = Mutex<[String: Held]>([:])
    /// The monotonic clock the leases run out on here.
    public let clock: AnyClock

    public init(clock: AnyClock) {
        self.clock = clock
    }

    /// The fence of the context's lease while it is held here; nil otherwise.
    public func fence(_ context: String) -> Int64? {
        let now = clock.now
        return held.withLock { held in held[context].flatMap { $0.until > now ? $0.fence : nil } }
    }

    public var count: Int {
        let now = clock.now
        return held.withLock { $0.values.filter { $0.until > now }.count }
    }

    public var names: Set<String> {
        let now = clock.now
        return held.withLock { Set($0.compactMap { $0.value.until > now ? $0.key : nil }) }
    }

    /// Replaces the book by the leases of a round that started at `roundStarted`, each valid here until `until`.
    /// A lease granted since the round started (a context created meanwhile) stays: the round could not see it.
    func replace(_ grants: [LeaseGrant], until: AnyClock.Instant, roundStarted: AnyClock.Instant) {
        held.withLock { held in
            var next = Dictionary(grants.map { ($0.context, Held(fence: $0.fence, until: until, grantedAt: nil)) },
                                  uniquingKeysWith: { a, _ in a })
            for (name, lease) in held where next[name] == nil {
                if let grantedAt = lease.grantedAt, grantedAt >= roundStarted { next[name] = lease }
            }
            held = next
        }
    }

    /// Adds one lease (a context this daemon just created).
    func grant(_ grant: LeaseGrant, until: AnyClock.Instant) {
        let now = clock.now
        held.withLock { $0[grant.context] = Held(fence: grant.fence, until: until, grantedAt: now) }
    }

    func remove(_ contexts: some Sequence<String>) {
        held.withLock { held in for context in contexts { held[context] = nil } }
    }

    func removeAll() { held.withLock { $0 = [:] } }
}
