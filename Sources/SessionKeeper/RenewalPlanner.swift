import Foundation
import HeapModule

/// The renewal scheduler's brain: one priority queue of deadlines (earliest first) over every context, with the
/// rules for when to renew, how to back off and when a token may be handed out. It is synchronous and takes the
/// time as an argument, so it can be driven by a real clock (`SessionScheduler`) or simulated in tests.
///
/// No timer or task exists per context: an idle context costs one dictionary entry and one heap entry.
public struct RenewalPlanner<Random: RandomNumberGenerator & Sendable>: Sendable {
    struct Entry: Sendable {
        var session: SessionInfo?
        /// Whether the context ever had a session: without one now it is `expired`, not `bootstrapping`.
        var hadSession = false
        var renewAt: Date?
        var lastRenewedAt: Date?
        var failures = 0
        var nextRetryAt: Date?
        var lastError: String?
        var generation = 0
        var inFlight = false
        var needsAttention = false
        /// One immediate renewal per "session invalid" report, until the next success: never a loop.
        var invalidReported = false
        /// The heap entry that is current for this context; older ones are skipped when popped.
        var dueSequence = 0
        var dueAt: Date?
    }

    struct Deadline: Comparable, Sendable {
        let at: Date
        let sequence: Int
        let name: String

        static func < (lhs: Deadline, rhs: Deadline) -> Bool {
            lhs.at == rhs.at ? lhs.sequence < rhs.sequence : lhs.at < rhs.at
        }
    }

    /// Applies to renewals scheduled from now on (a reload can change it).
    public var policy: RenewalPolicy
    private var random: Random
    private var entries: [String: Entry] = [:]
    private var deadlines = Heap<Deadline>()
    private var nextSequence = 0
    public private(set) var inFlightCount = 0

    public init(policy: RenewalPolicy, random: Random) {
        self.policy = policy
        self.random = random
    }

    public var contextNames: [String] { Array(entries.keys) }
    public var count: Int { entries.count }

    // MARK: Membership

    /// Adds a context, with its restored session if it has one. A session that is missing, expired or within
    /// the renewal window is renewed at once; a healthy one at its renewal time.
    public mutating func add(_ name: String, session: SessionInfo?, generation: Int = 0, now: Date) {
        var entry = Entry()
        entry.session = session
        entry.hadSession = session != nil || generation > 0
        entry.generation = generation
        if let session {
            entry.renewAt = policy.renewAt(created: session.created, expiresAt: session.expiresAt, using: &random)
        }
        entries[name] = entry
        schedule(name, at: max(now, entry.renewAt ?? now))
    }

    public mutating func remove(_ name: String) {
        if entries[name]?.inFlight == true { inFlightCount -= 1 }
        entries[name] = nil
    }

    // MARK: The loop's side

    /// When the earliest pending deadline is; nil when nothing is scheduled.
    public mutating func nextDeadline() -> Date? {
        dropStale()
        return deadlines.min?.at
    }

    /// The context due next and when.
    public mutating func nextDue() -> (name: String, at: Date)? {
        dropStale()
        return deadlines.min.map { ($0.name, $0.at) }
    }

    /// Contexts due at `now`, earliest deadline first, at most `limit`; they are marked in flight, and each must
    /// be answered with `succeeded` or `failed`.
    public mutating func takeDue(now: Date, limit: Int) -> [String] {
        var due: [String] = []
        while due.count < limit {
            dropStale()
            guard let first = deadlines.min, first.at <= now else { break }
            deadlines.removeMin()
            guard var entry = entries[first.name] else { continue }
            entry.inFlight = true
            entry.dueAt = nil
            entries[first.name] = entry
            inFlightCount += 1
            due.append(first.name)
        }
        return due
    }

    /// A renewal produced `session`. Returns the new generation.
    @discardableResult
    public mutating func succeeded(_ name: String, session: SessionInfo, now: Date) -> Int {
        guard var entry = entries[name] else { return 0 }
        if entry.inFlight { inFlightCount -= 1 }
        entry.inFlight = false
        entry.session = session
        entry.hadSession = true
        entry.generation += 1
        entry.lastRenewedAt = now
        entry.failures = 0
        entry.nextRetryAt = nil
        entry.lastError = nil
        entry.needsAttention = false
        entry.invalidReported = false
        let renewAt = policy.renewAt(created: session.created, expiresAt: session.expiresAt, using: &random)
        // Server time can lag ours: never schedule into the past, and never sooner than the backoff floor.
        entry.renewAt = max(renewAt, now.addingTimeInterval(policy.backoffBase / 2))
        entries[name] = entry
        schedule(name, at: entry.renewAt!)
        return entry.generation
    }

    /// A renewal failed. Retryable failures back off; rejected credentials stop the context until
    /// `requestRenewal`. Returns whether the context just entered `needs_attention` (to log that once).
    @discardableResult
    public mutating func failed(_ name: String, error: RenewalError, now: Date) -> Bool {
        guard var entry = entries[name] else { return false }
        if entry.inFlight { inFlightCount -= 1 }
        entry.inFlight = false
        entry.failures += 1
        entry.lastError = error.message
        var enteredAttention = false
        switch error.kind {
        case .needsAttention:
            enteredAttention = !entry.needsAttention
            entry.needsAttention = true
            entry.nextRetryAt = nil
            entries[name] = entry
        case .retryable:
            let retryAt = now.addingTimeInterval(policy.backoff(failures: entry.failures, using: &random))
            entry.nextRetryAt = retryAt
            entries[name] = entry
            schedule(name, at: retryAt)
        }
        return enteredAttention
    }

    /// An explicit renewal (a client's `session.renew`, a configuration reload): due now, also out of
    /// `needs_attention`. No effect while a renewal is in flight.
    public mutating func requestRenewal(_ name: String, now: Date) {
        guard var entry = entries[name], !entry.inFlight else { return }
        entry.needsAttention = false
        entry.nextRetryAt = nil
        entries[name] = entry
        schedule(name, at: now)
    }

    /// bunq answered "Insufficient authentication" to this context's token: one immediate renewal. A second
    /// report before a renewal succeeds changes nothing (the scheduled retry stands), so it never loops.
    public mutating func sessionInvalid(_ name: String, now: Date) {
        guard var entry = entries[name], !entry.inFlight, !entry.needsAttention, !entry.invalidReported else { return }
        entry.invalidReported = true
        entry.session = nil
        entries[name] = entry
        schedule(name, at: now)
    }

    // MARK: The token rule and status

    /// The token, only if it stays valid for at least the safety margin after `now`; otherwise the state and
    /// when to ask again. Never an expired or soon-to-expire token.
    public func lease(_ name: String, now: Date) -> LeaseResult? {
        guard let entry = entries[name] else { return nil }
        if let session = entry.session,
           now.addingTimeInterval(margin(session)) < session.expiresAt, !entry.needsAttention {
            return .granted(token: session.token, userId: session.userId, expiresAt: session.expiresAt,
                            renewAt: entry.renewAt, generation: entry.generation)
        }
        let state = self.state(entry, now: now)
        let retryAt: Date? = state == .needsAttention ? nil : (entry.inFlight ? now.addingTimeInterval(1) : entry.dueAt ?? now)
        return .unavailable(state: state, retryAt: retryAt, reason: entry.lastError)
    }

    /// When the context's next renewal attempt is due; nil while in flight or stopped.
    public func pendingDeadline(_ name: String) -> Date? {
        guard let entry = entries[name], !entry.inFlight, !entry.needsAttention else { return nil }
        return entry.dueAt
    }

    public func schedule(_ name: String, now: Date) -> ContextSchedule? {
        guard let entry = entries[name] else { return nil }
        return ContextSchedule(state: state(entry, now: now), userId: entry.session?.userId,
                               expiresAt: entry.session?.expiresAt, renewAt: entry.renewAt,
                               lastRenewedAt: entry.lastRenewedAt, consecutiveFailures: entry.failures,
                               nextRetryAt: entry.nextRetryAt, lastError: entry.lastError, generation: entry.generation)
    }

    /// The state is derived from the facts at `now`, so it can never be stale.
    private func state(_ entry: Entry, now: Date) -> ContextState {
        if entry.needsAttention { return .needsAttention }
        guard let session = entry.session else {
            return entry.hadSession ? .expired : .bootstrapping
        }
        guard now.addingTimeInterval(margin(session)) < session.expiresAt else { return .expired }
        if entry.inFlight { return .renewing }
        return entry.failures > 0 ? .retrying : .live
    }

    private func margin(_ session: SessionInfo) -> TimeInterval {
        policy.margin(lifetime: session.expiresAt.timeIntervalSince(session.created))
    }

    // MARK: Heap

    private mutating func schedule(_ name: String, at date: Date) {
        nextSequence += 1
        entries[name]?.dueSequence = nextSequence
        entries[name]?.dueAt = date
        deadlines.insert(Deadline(at: date, sequence: nextSequence, name: name))
    }

    /// Pops heap entries that no longer count: removed contexts, rescheduled ones, ones in flight.
    private mutating func dropStale() {
        while let first = deadlines.min {
            if let entry = entries[first.name], entry.dueSequence == first.sequence, !entry.inFlight { return }
            deadlines.removeMin()
        }
    }
}
