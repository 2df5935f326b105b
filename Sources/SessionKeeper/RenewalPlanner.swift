import DequeModule
import Foundation
import HeapModule

/// The renewal scheduler's brain: one priority queue of deadlines (earliest first) over every context, the queue
/// for the scarce session-server budget (most urgent first), and the rules for when to renew, how to back off and
/// when a token may be handed out. It is synchronous and takes the time as an argument, so it is driven by the
/// scheduler's monotonic clock or simulated in tests.
///
/// A renewal goes through up to three steps:
/// 1. *due*: its deadline (renewal time or retry time) passed;
/// 2. *preparing*: an identity that never had a session is bootstrapped first (key, installation, device); this
///    takes no session-server slot, and at most `limit` run at once;
/// 3. *queued*, then *calling*: it waits for the session-server budget, which is granted one call at a time to the
///    most urgent queued context: a session at risk of expiring first (soonest first), then new identities'
///    first sessions (oldest first), then routine renewals (soonest expiry first).
///
/// No timer or task exists per context: an idle context costs one dictionary entry and one heap entry.
public struct RenewalPlanner<Random: RandomNumberGenerator & Sendable>: Sendable {
    enum Phase: Sendable, Equatable {
        case idle, waitingToPrepare, preparing, queued, calling
    }

    struct Entry: Sendable {
        var session: SessionInfo?
        /// Whether the context ever had a session: without one now it is `expired`, not `bootstrapping`, and it
        /// needs no bootstrap before its session-server call.
        var hadSession = false
        /// The lifetime of its latest session: what the budget counts it for.
        var lifetime: TimeInterval?
        var renewAt: Date?
        var lastRenewedAt: Date?
        var failures = 0
        var nextRetryAt: Date?
        var lastError: String?
        var lastErrorCode: RenewalError.Code?
        var generation = 0
        var phase = Phase.idle
        var needsAttention = false
        /// Whether this daemon renews the context. Always, alone on a store; in a cluster, only while it holds the
        /// context's lease: the others follow the holder's sessions (`adopt`) and never renew it.
        var held = true
        /// When the renewal under way was planned to start (its deadline), for the renewal-lag histogram.
        var plannedAt: Date?
        /// The generation whose token was reported invalid: one renewal per reported generation.
        var invalidatedGeneration: Int?
        /// The heap or queue element that is current for this context; older ones are skipped when met.
        var sequence = 0
        var dueAt: Date?
    }

    /// A renewal the forecast expects: when it joins the queue and until when its session is usable.
    struct ForecastItem {
        let ready: Date
        let usableUntil: Date?
        let name: String
        let order: Int
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
    public let budget: SessionServerBudget
    private var random: Random
    private var entries: [String: Entry] = [:]
    private var deadlines = Heap<Deadline>()
    private var toPrepare = Deque<Deadline>()
    /// Queued contexts that had a session, keyed by the last moment it is usable (expiry minus margin).
    private var queuedSessions = Heap<Deadline>()
    /// Queued new identities, keyed by when they were queued.
    private var queuedNew = Heap<Deadline>()
    private var nextSequence = 0
    public private(set) var inFlightCount = 0
    public private(set) var preparingCount = 0
    /// The context whose session-server call is under way (one at a time).
    public private(set) var calling: String?
    /// The calling entry's sequence: nil once it was removed (its answer then only closes the call).
    private var callingSequence: Int?
    /// No session-server call before this: the end of the last one plus the spacing, or a 429's push-back.
    public private(set) var sessionServerOpensAt: Date?
    /// Sum over contexts of the sessions a day each needs.
    private var demandPerDay: Double = 0

    public init(policy: RenewalPolicy, budget: SessionServerBudget = SessionServerBudget(), random: Random) {
        self.policy = policy
        self.budget = budget
        self.random = random
    }

    public var contextNames: [String] { Array(entries.keys) }
    public var count: Int { entries.count }

    // MARK: Membership

    /// Adds a context, with its restored session if it has one. A session that is missing, expired or within
    /// the renewal window is renewed at once; a healthy one at its renewal time.
    public mutating func add(_ name: String, session: SessionInfo?, generation: Int = 0, held: Bool = true, now: Date) {
        remove(name)
        var entry = Entry()
        entry.held = held
        entry.session = session
        entry.hadSession = session != nil || generation > 0
        entry.generation = generation
        if let session {
            entry.renewAt = policy.renewAt(created: session.created, expiresAt: session.expiresAt, using: &random)
        }
        entries[name] = entry
        setLifetime(name, session.map { $0.expiresAt.timeIntervalSince($0.created) })
        schedule(name, at: max(now, entry.renewAt ?? now))
    }

    /// Forgets the context. A session-server call of its that is under way still holds the budget until it ends
    /// (`succeeded` or `failed` for it then only closes the call): bunq counts it either way.
    public mutating func remove(_ name: String) {
        guard let entry = entries[name] else { return }
        if entry.phase != .idle { inFlightCount -= 1 }
        if entry.phase == .preparing { preparingCount -= 1 }
        if calling == name { callingSequence = nil }
        setLifetime(name, nil)
        entries[name] = nil
    }

    // MARK: The loop's side

    /// Moves every context whose deadline has passed on: into the session-server queue, or first to be
    /// prepared when it never had a session.
    public mutating func collectDue(now: Date) {
        while let first = deadlines.min, first.at <= now {
            deadlines.removeMin()
            guard var entry = entries[first.name], entry.sequence == first.sequence, entry.phase == .idle,
                  entry.held else { continue }
            entry.plannedAt = first.at
            entry.dueAt = nil
            entry.phase = .waitingToPrepare
            inFlightCount += 1
            entries[first.name] = entry
            if entry.hadSession {
                enqueue(first.name, now: now)
            } else {
                nextSequence += 1
                entries[first.name]?.sequence = nextSequence
                toPrepare.append(Deadline(at: now, sequence: nextSequence, name: first.name))
            }
        }
    }

    /// Contexts to bootstrap now, oldest first, so that at most `limit` are being prepared at once. Each must be
    /// answered with `prepared` or `failed`.
    public mutating func startPreparations(limit: Int) -> [String] {
        var started: [String] = []
        while preparingCount < limit, let first = toPrepare.popFirst() {
            guard let entry = entries[first.name], entry.sequence == first.sequence, entry.phase == .waitingToPrepare
            else { continue }
            entries[first.name]?.phase = .preparing
            preparingCount += 1
            started.append(first.name)
        }
        return started
    }

    /// The context is bootstrapped up to its session-server call: it joins the session-server queue.
    public mutating func prepared(_ name: String, now: Date) {
        guard let entry = entries[name], entry.phase == .preparing else { return }
        preparingCount -= 1
        enqueue(name, now: now)
    }

    /// The most urgent queued context, when the session-server budget allows a call at `now`; it is then
    /// *calling*, and must be answered with `succeeded` or `failed`.
    public mutating func grantSessionCall(now: Date) -> String? {
        guard calling == nil, now >= sessionServerOpensAt ?? now else { return nil }
        dropStaleQueued()
        guard let pick = Self.choose(session: queuedSessions.min?.at, new: !queuedNew.isEmpty, now: now,
                                     horizon: budget.atRiskHorizon) else { return nil }
        let name = pick == .session ? queuedSessions.removeMin().name : queuedNew.removeMin().name
        entries[name]?.phase = .calling
        calling = name
        callingSequence = entries[name]?.sequence
        return name
    }

    enum Pick: Equatable { case session, new }

    /// The queue's one rule, shared by the real queue and the forecast: a session at risk (usable until within
    /// `horizon` of now) first, then a new identity's first session, then the routine renewal that expires first.
    static func choose(session usableUntil: Date?, new: Bool, now: Date, horizon: TimeInterval) -> Pick? {
        if let usableUntil, usableUntil.timeIntervalSince(now) <= horizon { return .session }
        if new { return .new }
        return usableUntil == nil ? nil : .session
    }

    /// When the loop must next look: the earliest deadline, or the moment the session-server budget opens for a
    /// queued context. Nil when nothing is scheduled.
    public mutating func nextWakeup() -> Date? {
        dropStale()
        dropStaleQueued()
        var next = deadlines.min?.at
        if calling == nil, !queuedSessions.isEmpty || !queuedNew.isEmpty {
            let opens = sessionServerOpensAt ?? .distantPast
            next = next.map { min($0, opens) } ?? opens
        }
        return next
    }

    /// When the earliest pending renewal or retry is due; nil when nothing is scheduled.
    public mutating func nextDeadline() -> Date? {
        dropStale()
        return deadlines.min?.at
    }

    /// The context due next and when.
    public mutating func nextDue() -> (name: String, at: Date)? {
        dropStale()
        return deadlines.min.map { ($0.name, $0.at) }
    }

    /// A renewal produced `session`. Returns the new generation.
    @discardableResult
    public mutating func succeeded(_ name: String, session: SessionInfo, now: Date) -> Int {
        guard !endOrphanedCall(name, now: now), var entry = entries[name] else { return 0 }
        finish(name, &entry, now: now, rateLimited: false)
        entry.session = session
        entry.hadSession = true
        entry.generation += 1
        entry.lastRenewedAt = now
        entry.failures = 0
        entry.nextRetryAt = nil
        entry.lastError = nil
        entry.lastErrorCode = nil
        entry.needsAttention = false
        entry.invalidatedGeneration = nil
        let renewAt = policy.renewAt(created: session.created, expiresAt: session.expiresAt, using: &random)
        // Never schedule into the past, and never sooner than the backoff floor: no renewal loop.
        entry.renewAt = max(renewAt, now.addingTimeInterval(policy.backoffBase / 2))
        entries[name] = entry
        setLifetime(name, session.expiresAt.timeIntervalSince(session.created))
        schedule(name, at: entry.renewAt!)
        return entry.generation
    }

    /// A renewal failed. Retryable failures back off; anything retrying cannot fix stops the context until
    /// `requestRenewal`. Returns whether the context just entered `needs_attention` (to log that once).
    @discardableResult
    public mutating func failed(_ name: String, error: RenewalError, now: Date) -> Bool {
        guard !endOrphanedCall(name, now: now), var entry = entries[name] else { return false }
        finish(name, &entry, now: now, rateLimited: error.isRateLimited)
        if error.code == .leaseLost {
            // Not a failure of the context: another daemon renews it now, and this one follows.
            entry.held = false
            entries[name] = entry
            return false
        }
        entry.failures += 1
        entry.lastError = error.message
        entry.lastErrorCode = error.code
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

    /// The answer to a call whose context was removed (and perhaps added anew) meanwhile: it closes the call and
    /// changes nothing else. Returns whether it was one.
    private mutating func endOrphanedCall(_ name: String, now: Date) -> Bool {
        guard calling == name, callingSequence == nil || entries[name]?.sequence != callingSequence else { return false }
        calling = nil
        callingSequence = nil
        sessionServerOpensAt = now.addingTimeInterval(budget.spacing)
        return true
    }

    /// Ends the context's renewal; a session-server call's end opens the budget one spacing later (a 429: one
    /// spacing from now, which is the same, as the call just ended).
    private mutating func finish(_ name: String, _ entry: inout Entry, now: Date, rateLimited: Bool) {
        if entry.phase != .idle { inFlightCount -= 1 }
        if entry.phase == .preparing { preparingCount -= 1 }
        if calling == name, entry.phase == .calling {
            calling = nil
            callingSequence = nil
            sessionServerOpensAt = now.addingTimeInterval(budget.spacing)
        }
        entry.phase = .idle
    }

    /// A 429 from the session-server that no call of ours caused (another process on this IP): no call for one
    /// spacing from now.
    public mutating func sessionServerRateLimited(now: Date) {
        let opens = now.addingTimeInterval(budget.spacing)
        sessionServerOpensAt = max(sessionServerOpensAt ?? opens, opens)
    }

    /// An explicit renewal (a client's `session.renew`, a configuration reload): due now, also out of
    /// `needs_attention`. No effect while a renewal is under way.
    public mutating func requestRenewal(_ name: String, now: Date) {
        guard var entry = entries[name], entry.phase == .idle else { return }
        entry.needsAttention = false
        entry.nextRetryAt = nil
        entries[name] = entry
        schedule(name, at: now)
    }

    /// bunq answered "Insufficient authentication" to generation `generation`'s token: that token is not handed
    /// out again, and one renewal starts at once, at the head of the session-server queue. Returns false, and
    /// changes nothing, when that generation was already reported or replaced (however many callers report it).
    @discardableResult
    public mutating func sessionInvalid(_ name: String, generation: Int, now: Date) -> Bool {
        guard var entry = entries[name], entry.generation == generation, entry.session != nil,
              entry.invalidatedGeneration != generation else { return false }
        entry.invalidatedGeneration = generation
        entry.session = nil
        entries[name] = entry
        switch entry.phase {
        case .idle where !entry.needsAttention:
            schedule(name, at: now)
        case .queued:
            enqueue(name, now: now)  // again, now keyed as dead: ahead of everything
        default:
            break  // a renewal is already under way
        }
        return true
    }

    // MARK: Following another daemon (a cluster)

    /// Whether this daemon renews the context (it holds its lease). Gaining it schedules the renewal at its time
    /// (at once when due); losing it takes a queued renewal out of the queue. A renewal already under way ends by
    /// itself: its commit is refused without the lease, and `failed` with `leaseLost` closes it.
    public mutating func setHeld(_ name: String, _ held: Bool, now: Date) {
        guard var entry = entries[name], entry.held != held else { return }
        entry.held = held
        entries[name] = entry
        if held {
            if entry.phase == .idle, !entry.needsAttention { schedule(name, at: max(now, entry.nextRetryAt ?? entry.renewAt ?? now)) }
        } else if entry.phase == .queued || entry.phase == .waitingToPrepare {
            inFlightCount -= 1
            nextSequence += 1
            entries[name]?.sequence = nextSequence  // drops its queue entry
            entries[name]?.phase = .idle
        }
    }

    public func isHeld(_ name: String) -> Bool { entries[name]?.held ?? false }

    /// The contexts this daemon renews.
    public var heldNames: [String] { entries.compactMap { $0.value.held ? $0.key : nil } }

    /// Whether a renewal of the context is under way here (a lease is not given up during one).
    public func isBusy(_ name: String) -> Bool { (entries[name]?.phase ?? .idle) != .idle }

    /// A session another daemon committed (generation `generation`): taken over when newer than this daemon's,
    /// which also clears a failure or `needs_attention` the holder has since healed. Returns whether it was newer.
    @discardableResult
    public mutating func adopt(_ name: String, session: SessionInfo, generation: Int, now: Date) -> Bool {
        guard var entry = entries[name], generation > entry.generation else { return false }
        entry.session = session
        entry.hadSession = true
        entry.generation = generation
        entry.lastRenewedAt = now
        entry.failures = 0
        entry.nextRetryAt = nil
        entry.lastError = nil
        entry.lastErrorCode = nil
        entry.needsAttention = false
        entry.invalidatedGeneration = nil
        entry.renewAt = policy.renewAt(created: session.created, expiresAt: session.expiresAt, using: &random)
        entries[name] = entry
        setLifetime(name, session.expiresAt.timeIntervalSince(session.created))
        if entry.phase == .idle { schedule(name, at: max(now, entry.renewAt!)) }
        return true
    }

    /// When the context's renewal under way was planned to start.
    public func plannedAt(_ name: String) -> Date? { entries[name]?.plannedAt }

    /// The generation the context is at (0 before its first session).
    public func generation(_ name: String) -> Int? { entries[name]?.generation }

    // MARK: The token rule and status

    /// The token, only if it stays valid for at least the safety margin after `now`; otherwise the state and
    /// when to ask again. Never an expired or soon-to-expire token.
    public func tokenGrant(_ name: String, now: Date) -> TokenGrant? {
        guard let entry = entries[name] else { return nil }
        if let session = entry.session,
           now.addingTimeInterval(margin(session)) < session.expiresAt, !entry.needsAttention {
            return .granted(token: session.token, userId: session.userId, expiresAt: session.expiresAt,
                            renewAt: entry.renewAt, generation: entry.generation)
        }
        let state = self.state(entry, now: now)
        let retryAt: Date? = state == .needsAttention ? nil
            : (entry.phase != .idle ? max(now.addingTimeInterval(1), sessionServerOpensAt ?? now) : entry.dueAt ?? now)
        return .unavailable(state: state, retryAt: retryAt,
                            reason: state == .needsAttention ? entry.lastErrorCode?.description : entry.lastError)
    }

    /// When the context's next renewal attempt is due; nil while under way or stopped.
    public func pendingDeadline(_ name: String) -> Date? {
        guard let entry = entries[name], entry.phase == .idle, !entry.needsAttention else { return nil }
        return entry.dueAt
    }

    public func schedule(_ name: String, now: Date) -> ContextSchedule? {
        guard let entry = entries[name] else { return nil }
        return ContextSchedule(state: state(entry, now: now), userId: entry.session?.userId,
                               expiresAt: entry.session?.expiresAt, renewAt: entry.renewAt,
                               lastRenewedAt: entry.lastRenewedAt, consecutiveFailures: entry.failures,
                               nextRetryAt: entry.nextRetryAt, lastError: entry.lastError, generation: entry.generation,
                               reason: entry.needsAttention ? entry.lastErrorCode?.description : nil,
                               margin: entry.session.map(margin) ?? 0)
    }

    /// Every context's state at `now`.
    public func states(now: Date) -> [String: ContextState] { entries.mapValues { state($0, now: now) } }

    /// The state is derived from the facts at `now`, so it can never be stale.
    private func state(_ entry: Entry, now: Date) -> ContextState {
        if entry.needsAttention { return .needsAttention }
        guard let session = entry.session else {
            return entry.hadSession ? .expired : .bootstrapping
        }
        guard now.addingTimeInterval(margin(session)) < session.expiresAt else { return .expired }
        if entry.phase != .idle { return .renewing }
        return entry.failures > 0 ? .retrying : .live
    }

    private func margin(_ session: SessionInfo) -> TimeInterval {
        policy.margin(lifetime: session.expiresAt.timeIntervalSince(session.created))
    }

    /// The last moment the context's session may be handed out; nil for a new identity, distant past for one
    /// whose session is gone (expired or reported invalid).
    private func usableUntil(_ entry: Entry) -> Date? {
        if let session = entry.session { return session.expiresAt.addingTimeInterval(-margin(session)) }
        return entry.hadSession ? .distantPast : nil
    }

    // MARK: The budget

    /// Demand against supply of session-server calls, and (above 100%) who will run late.
    /// `forecastHorizon` nil skips the forecast.
    public func budgetStatus(now: Date, forecastHorizon: TimeInterval? = 86_400) -> BudgetStatus {
        var status = BudgetStatus(neededPerDay: demandPerDay, availablePerDay: budget.availablePerDay, late: [])
        if status.utilisation > 1, let forecastHorizon { status.late = forecastLate(now: now, horizon: forecastHorizon) }
        return status
    }

    private mutating func setLifetime(_ name: String, _ lifetime: TimeInterval?) {
        if let old = entries[name]?.lifetime { demandPerDay -= budget.demandPerDay(lifetime: old) }
        if let lifetime, entries[name] != nil {
            entries[name]?.lifetime = lifetime
            demandPerDay += budget.demandPerDay(lifetime: lifetime)
        }
        if entries.isEmpty { demandPerDay = 0 }  // no drift from float sums
    }

    /// The contexts whose next session, granted in the queue's order one spacing apart and assuming every call
    /// succeeds at once, comes after the moment their current session stops being usable: the outcome the queue
    /// will produce if nothing changes. Covers the renewals due within `horizon` (capped at 65% of the shortest
    /// lifetime, beyond which renewals not yet scheduled would join); contexts already without a usable session
    /// count as late.
    public func forecastLate(now: Date, horizon: TimeInterval) -> [String] {
        let shortest = entries.values.compactMap(\.lifetime).min() ?? horizon
        let end = now.addingTimeInterval(min(horizon, shortest * (policy.renewFraction - policy.jitterFraction)))
        var items: [ForecastItem] = []
        for (name, entry) in entries where !entry.needsAttention && entry.phase != .calling {
            let ready: Date
            switch entry.phase {
            case .idle:
                guard let due = entry.dueAt, due <= end else { continue }
                ready = max(now, due)
            default:
                ready = now
            }
            items.append(ForecastItem(ready: ready, usableUntil: usableUntil(entry), name: name, order: entry.sequence))
        }
        items.sort { ($0.ready, $0.order) < ($1.ready, $1.order) }
        var sessions = Heap<Deadline>(), fresh = Heap<Deadline>()
        var late: [String] = []
        var next = 0
        var t = max(now, sessionServerOpensAt ?? now)
        if calling != nil { t = max(t, now.addingTimeInterval(budget.spacing)) }
        while next < items.count || !sessions.isEmpty || !fresh.isEmpty {
            if sessions.isEmpty, fresh.isEmpty { t = max(t, items[next].ready) }
            while next < items.count, items[next].ready <= t {
                let item = items[next]
                if let usable = item.usableUntil {
                    sessions.insert(Deadline(at: usable, sequence: item.order, name: item.name))
                } else {
                    fresh.insert(Deadline(at: item.ready, sequence: item.order, name: item.name))
                }
                next += 1
            }
            switch Self.choose(session: sessions.min?.at, new: !fresh.isEmpty, now: t, horizon: budget.atRiskHorizon) {
            case .session?:
                let granted = sessions.removeMin()
                if t > granted.at { late.append(granted.name) }
            case .new?:
                fresh.removeMin()
            case nil:
                continue
            }
            t = t.addingTimeInterval(budget.spacing)
        }
        return late.sorted()
    }

    // MARK: Heaps and queues

    private mutating func schedule(_ name: String, at date: Date) {
        nextSequence += 1
        entries[name]?.sequence = nextSequence
        entries[name]?.dueAt = date
        deadlines.insert(Deadline(at: date, sequence: nextSequence, name: name))
    }

    /// Puts the context in the session-server queue: by when its session stops being usable, or (a new
    /// identity) by when it joined.
    private mutating func enqueue(_ name: String, now: Date) {
        guard var entry = entries[name] else { return }
        nextSequence += 1
        entry.sequence = nextSequence
        entry.phase = .queued
        entries[name] = entry
        if let usable = usableUntil(entry) {
            queuedSessions.insert(Deadline(at: usable, sequence: nextSequence, name: name))
        } else {
            queuedNew.insert(Deadline(at: now, sequence: nextSequence, name: name))
        }
    }

    private func isCurrent(_ element: Deadline, _ phase: Phase) -> Bool {
        guard let entry = entries[element.name] else { return false }
        return entry.sequence == element.sequence && entry.phase == phase
    }

    /// Pops deadline heap entries that no longer count: removed contexts, rescheduled ones, ones under way.
    private mutating func dropStale() {
        while let first = deadlines.min, !isCurrent(first, .idle) { deadlines.removeMin() }
    }

    private mutating func dropStaleQueued() {
        while let first = queuedSessions.min, !isCurrent(first, .queued) { queuedSessions.removeMin() }
        while let first = queuedNew.min, !isCurrent(first, .queued) { queuedNew.removeMin() }
    }
}
