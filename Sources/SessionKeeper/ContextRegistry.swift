import BunqAPI
import Foundation
import Timekeeping

/// The one owner of everything about every context: its record (kind, session, generation, bunq's key), its
/// incarnation, its renewal schedule (the planner's entry), its cluster lease and its published signing key. It
/// is the only writer of each, and of the store's rows; it publishes the immutable snapshots the socket and the
/// proxy read (`SessionTable`, `SigningKeys`) and the events subscribers hear (`events`). Nothing refers back to
/// it and nothing is wired after init: the renewer it runs is handed to its loop (`run(renewing:)`).
///
/// The parts live in files named for them: membership (restore, create, remove, what other daemons did) in
/// `ContextRegistry+Membership.swift`, the renewal loop and the writes a renewal makes in
/// `ContextRegistry+Renewals.swift`, a cluster's leases in `ContextRegistry+Leases.swift`.
///
/// Each context is owned under an *incarnation*: a number given when it is created (or restored) and never
/// reused. A renewal reads it when it starts and presents it with every write; once the context is removed (or
/// removed and created anew under the same name) those writes are refused, so an in-flight renewal cannot bring
/// a removed context back, in memory or in the store. A removal is the tombstone: the row is deleted (securely:
/// its pages are overwritten) and the incarnation retired.
///
/// Store calls are asynchronous, so the actor could interleave two changes of one context across them; every
/// change that writes the store therefore holds that context's turn (`turn`) from its check to its update in
/// memory, and checks the incarnation again after the write. Changes of different contexts, the loop, reads and
/// snapshots go on meanwhile. Everything else (the schedule, the lease, the snapshot) changes without a
/// suspension, so it is always consistent with the record.
///
/// Time: the planner's timeline is `originDate` at `origin`, then the monotonic clock's elapsed time, so a wall
/// clock that steps moves no deadline. Dates in and out are the wall clock's, converted at the boundary (`skew`).
public actor ContextRegistry {
    struct Owned {
        var record: ContextRecord
        let incarnation: UInt64
    }

    var contexts: [String: Owned] = [:]
    private var lastIncarnation: UInt64 = 0
    /// The schedule of every context: deadlines, backoff, the session-server budget's queue, `needs_attention`.
    var planner: RenewalPlanner<SystemRandomNumberGenerator>
    /// A cluster's leases held here, with the moment each stops counting on this daemon's clock.
    var leases: [String: Lease] = [:]
    let store: any StateBackend
    /// The published snapshots: the socket's and the proxy's view.
    let sessions: SessionTable
    let signingKeys: SigningKeys
    /// In a cluster: the shared store and this daemon's name and lease lengths. Sessions and bootstrap steps are
    /// then written only under the context's lease, and contexts come and go through the store.
    let fencing: Fencing?
    let maxConcurrent: Int
    /// The monotonic clock of every deadline and wait, and the wall clock bunq's dates are read against.
    public nonisolated let clock: AnyClock
    let wallClock: @Sendable () -> Date
    private let origin: AnyClock.Instant
    private let originDate: Date
    /// Contexts with a change under way, and the changes waiting for their turn (first come, first served).
    private var turns: [String: [CheckedContinuation<Void, Never>]] = [:]
    let wake = WakeSignal()
    /// Callers waiting for a context's next renewal outcome. Outside the actor so a cancelled caller can leave.
    let waiters = RenewalWaiters()
    let eventContinuation: AsyncStream<ContextEvent>.Continuation
    /// Every renewal outcome, in order, with the snapshot published for it. One consumer.
    public nonisolated let events: AsyncStream<ContextEvent>
    /// Loop iterations so far: proof of progress for the watchdog.
    public internal(set) var ticks: UInt64 = 0
    /// The longest the loop sleeps without a deadline, so a healthy loop ticks at least this often.
    var maxSleep: TimeInterval = 10
    /// Who the last budget forecast said would run late.
    var lastLate: [String] = []

    /// A cluster's terms: the shared store, this daemon's name, and how long a lease lasts there and here.
    public struct Fencing: Sendable {
        let store: any ClusterStore
        let instance: String
        /// The cluster's lease: in the store, and here (shorter).
        let leaseDuration: Double
        let localDuration: Double

        init(store: any ClusterStore, instance: String, leaseDuration: Double, localDuration: Double) {
            self.store = store
            self.instance = instance
            self.leaseDuration = leaseDuration
            self.localDuration = localDuration
        }
    }

    init(store: any StateBackend, sessions: SessionTable, signingKeys: SigningKeys, policy: RenewalPolicy,
         budget: SessionServerBudget, maxConcurrent: Int, fencing: Fencing? = nil, clock: AnyClock,
         wallClock: @escaping @Sendable () -> Date) {
        self.store = store
        self.sessions = sessions
        self.signingKeys = signingKeys
        self.fencing = fencing
        planner = RenewalPlanner(policy: policy, budget: budget, random: SystemRandomNumberGenerator())
        self.maxConcurrent = max(1, maxConcurrent)
        self.clock = clock
        self.wallClock = wallClock
        origin = clock.now
        originDate = wallClock()
        (events, eventContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(10_000))
    }

    /// A registry of its own, alone on a store (no cluster): for tests of the schedule and the token rule.
    public init(store: any StateBackend, policy: RenewalPolicy, budget: SessionServerBudget = SessionServerBudget(),
                maxConcurrent: Int = 8, clock: AnyClock = .continuous,
                wallClock: @escaping @Sendable () -> Date = Date.init) {
        self.init(store: store, sessions: SessionTable(clock: clock), signingKeys: SigningKeys(), policy: policy,
                  budget: budget, maxConcurrent: maxConcurrent, clock: clock, wallClock: wallClock)
    }

    // MARK: Clocks

    /// Now on the planner's (monotonic) timeline.
    var now: Date { originDate.addingTimeInterval(origin.duration(to: clock.now).seconds) }
    /// Timeline minus wall clock: zero until the wall clock steps.
    var skew: TimeInterval { now.timeIntervalSince(wallClock()) }
    func outbound(_ date: Date?) -> Date? { date?.addingTimeInterval(-skew) }

    // MARK: Turns

    /// Waits for the context's turn: one change of a context at a time, across its store calls.
    func turn(_ name: String) async {
        guard turns[name] != nil else {
            turns[name] = []
            return
        }
        await withCheckedContinuation { turns[name, default: []].append($0) }
    }

    /// Ends the turn: the next waiting change of the context goes on.
    func endTurn(_ name: String) {
        guard var waiting = turns[name], !waiting.isEmpty else {
            turns[name] = nil
            return
        }
        let next = waiting.removeFirst()
        turns[name] = waiting
        next.resume()
    }

    /// `body` in the context's turn.
    func inTurn<T>(_ name: String, _ body: () async throws -> T) async rethrows -> T {
        await turn(name)
        defer { endTurn(name) }
        return try await body()
    }

    /// Whether a change of the context is under way here (a creation or a removal between its store calls).
    func isChanging(_ name: String) -> Bool { turns[name] != nil }

    func nextIncarnation() -> UInt64 {
        lastIncarnation += 1
        return lastIncarnation
    }

    /// A write presented by a renewal of a context that is no longer the one it started for.
    static func gone(_ name: String) -> RenewalError {
        RenewalError(.needsAttention, "context \(name) was removed", code: .removed)
    }

    // MARK: Reads

    func record(_ name: String) -> ContextRecord? { contexts[name]?.record }
    func incarnation(_ name: String) -> UInt64? { contexts[name]?.incarnation }
    var names: [String] { Array(contexts.keys) }

    /// Every context's kind and session expiry, with its state (a metrics scrape), in one pass.
    func kindsExpiryAndStates() -> [(name: String, kind: StoredContext.Kind, expiresAt: Date?, state: ContextState)] {
        let states = planner.states(now: now)
        return contexts.map { ($0.key, $0.value.record.kind, $0.value.record.session?.expiresAt,
                               states[$0.key] ?? .bootstrapping) }
    }

    /// The generation this daemon serves for one context (a notification's check: no pass over all of them).
    func generation(_ name: String) -> Int? { contexts[name]?.record.generation }

    /// The generation this daemon serves for each context.
    var generations: [String: Int] { contexts.mapValues(\.record.generation) }

    // MARK: Signing keys

    /// Publishes a registration's installation key; a key that does not parse is found again by its renewal.
    func publishKey(_ name: String, _ registration: IdentityRegistration) {
        guard contexts[name] != nil else { return }
        try? signingKeys.publish(name, registration)
    }

    /// A context's installation key not published yet: read from the store (within its deadline) and published,
    /// unless the context went meanwhile.
    func loadSigningKey(_ name: String) async throws {
        guard contexts[name] != nil, let context = try await store.context(name), contexts[name] != nil else {
            throw KeeperError(.unknownContext, "no context named \(name)")
        }
        try signingKeys.publish(name, context.registration)
    }

    // MARK: Snapshots

    /// Publishes the context's current snapshot (its record and its schedule), or withdraws it when the context
    /// is gone. Returns the published entry.
    @discardableResult
    func publish(_ name: String) -> SessionEntry? {
        guard let owned = contexts[name], let schedule = schedule(name) else {
            sessions.remove(name)
            return nil
        }
        let entry = snapshot(owned.record, schedule)
        sessions.set(entry)
        return entry
    }

    /// The hot path's view of a context. A token may be handed out only while the session is valid beyond the
    /// margin; from then on the monotonic clock decides.
    func snapshot(_ record: ContextRecord, _ schedule: ContextSchedule) -> SessionEntry {
        var usableUntil: AnyClock.Instant?
        if [.live, .renewing, .retrying].contains(schedule.state), record.session != nil, let expiresAt = schedule.expiresAt {
            let left = expiresAt.addingTimeInterval(-schedule.margin).timeIntervalSince(wallClock())
            usableUntil = sessions.now + .seconds(left)
        }
        return SessionEntry(context: record.name, kind: record.kind, session: usableUntil == nil ? nil : record.session,
                            renewAt: schedule.renewAt, generation: schedule.generation,
                            serverPublicKeyPEM: record.serverPublicKeyPEM, usableUntil: usableUntil, state: schedule.state)
    }
}

/// A renewal outcome as the registry published it: the event, the snapshot published with it (nil: withdrawn)
/// and the context's kind.
public struct ContextEvent: Sendable {
    public let event: SchedulerEvent
    public let entry: SessionEntry?
    public let kind: StoredContext.Kind?
}
