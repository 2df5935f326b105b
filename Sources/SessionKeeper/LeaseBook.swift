import Foundation
import Synchronization

/// The leases this daemon holds, as the last lease round left them, with the moment (on the monotonic clock) each
/// stops counting here. That moment comes before the store's own expiry of the lease, so a daemon that was paused
/// (SIGSTOP, a VM freeze) or cut off finds its leases gone when it resumes, before it calls bunq, whatever its wall
/// clock says; the store's fencing refuses whatever write still slips through.
public final class LeaseBook: Sendable {
    private let held = Mutex<[String: (fence: Int64, until: ContinuousClock.Instant)]>([:])

    public init() {}

    /// The fence of the context's lease while it is held here; nil otherwise.
    public func fence(_ context: String, at now: ContinuousClock.Instant = .now) -> Int64? {
        held.withLock { held in held[context].flatMap { $0.until > now ? $0.fence : nil } }
    }

    public var count: Int {
        let now = ContinuousClock.now
        return held.withLock { $0.values.filter { $0.until > now }.count }
    }

    public var names: Set<String> {
        let now = ContinuousClock.now
        return held.withLock { Set($0.compactMap { $0.value.until > now ? $0.key : nil }) }
    }

    /// Replaces the book by the leases of one round, each valid here until `until`.
    func replace(_ grants: [LeaseGrant], until: ContinuousClock.Instant) {
        held.withLock { held in
            held = Dictionary(grants.map { ($0.context, (fence: $0.fence, until: until)) }, uniquingKeysWith: { a, _ in a })
        }
    }

    /// Adds one lease (a context this daemon just created).
    func grant(_ grant: LeaseGrant, until: ContinuousClock.Instant) {
        held.withLock { $0[grant.context] = (fence: grant.fence, until: until) }
    }

    func remove(_ contexts: some Sequence<String>) {
        held.withLock { held in for context in contexts { held[context] = nil } }
    }
}
