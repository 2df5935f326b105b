import BunqAPI
import Foundation
import Timekeeping

/// The one owner of every context's state. Every change — a bootstrap step, a renewal's new session, a removal,
/// an OAuth completion, a reload — goes through this actor, which writes the store and then publishes an
/// immutable snapshot (`SessionEntry`) to the session table the socket reads. Nothing else writes a context's row or
/// its snapshot.
///
/// Each context is owned under an *incarnation*: a number given when it is created (or restored) and never
/// reused. A renewal reads it when it starts and presents it with every write; once the context is removed (or
/// removed and created anew under the same name) those writes are refused, so an in-flight renewal cannot bring
/// a removed context back, in memory or in the store. A removal is the tombstone: the row is deleted (securely:
/// its pages are overwritten) and the incarnation retired.
///
/// Store calls are asynchronous, so the actor could interleave two changes of one context across them; every
/// change that writes the store therefore holds that context's turn (`turn`) from its check to its update in
/// memory, and checks the incarnation again after the write. Changes of different contexts, reads and snapshots
/// go on meanwhile. Whoever holds a registration publishes its installation key (`signingKeys`), so serving a
/// signature reads memory only.
actor ContextOwner {
    private struct Owned {
        var record: ContextRecord
        let incarnation: UInt64
    }

    private var contexts: [String: Owned] = [:]
    private var lastIncarnation: UInt64 = 0
    private let store: any StateBackend
    private let sessions: SessionTable
    private let scheduler: SessionScheduler<AnyClock>
    /// In a cluster: the shared store, the leases held here and this daemon's name. Sessions and bootstrap steps
    /// are then written only under the context's lease, and contexts come and go through the store.
    private let fencing: Fencing?
    /// Installation keys as the socket and the proxy read them.
    private let signingKeys: SigningKeys
    /// The wall clock a session's expiry is read against when its snapshot is published.
    private let wallClock: @Sendable () -> Date
    /// Contexts with a change under way, and the changes waiting for their turn (first come, first served).
    private var turns: [String: [CheckedContinuation<Void, Never>]] = [:]

    struct Fencing: Sendable {
        let store: any ClusterStore
        let book: LeaseBook
        let instance: String
        /// The cluster's lease: in the store, and here (shorter).
        let leaseDuration: Double
        let localDuration: Double

        /// Creates the context's row with its lease to this daemon; false when another daemon created it first.
        func insert(_ name: String, _ kind: StoredContext.Kind, _ registration: IdentityRegistration) async throws -> LeaseGrant? {
            let started = book.clock.now
            guard let grant = try await store.insertRegistration(name, kind: kind, registration, by: instance,
                                                           leaseSeconds: leaseDuration) else { return nil }
            book.grant(grant, until: started + .seconds(localDuration))
            return grant
        }
    }

    init(store: any StateBackend, sessions: SessionTable, scheduler: SessionScheduler<AnyClock>, signingKeys: SigningKeys,
         fencing: Fencing? = nil, wallClock: @escaping @Sendable () -> Date = Date.init) {
        self.store = store
        self.wallClock = wallClock
        self.sessions = sessions
        self.scheduler = scheduler
        self.signingKeys = signingKeys
        self.fencing = fencing
    }

    /// Waits for the context's turn: one change of a context at a time, across its store calls.
    private func turn(_ name: String) async {
        guard turns[name] != nil else {
            turns[name] = []
            return
        }
        await withCheckedContinuation { turns[name, default: []].append($0) }
    }

    /// Ends the turn: the next waiting change of the context goes on.
    private func endTurn(_ name: String) {
        guard var waiting = turns[name], !waiting.isEmpty else {
            turns[name] = nil
            return
        }
        let next = waiting.removeFirst()
        turns[name] = waiting
        next.resume()
    }

    /// `body` in the context's turn.
    private func inTurn<T>(_ name: String, _ body: () async throws -> T) async rethrows -> T {
        await turn(name)
        defer { endTurn(name) }
        return try await body()
    }

    /// Publishes a registration's installation key; a key that does not parse is found again by its renewal.
    private func publishKey(_ name: String, _ registration: IdentityRegistration) {
        try? signingKeys.publish(name, registration)
    }

    /// Whether this daemon renews a context it has just taken on: always alone, under its lease in a cluster.
    private func holds(_ name: String) -> Bool { fencing.map { $0.book.fence(name) != nil } ?? true }

    /// A write presented by a renewal of a context that is no longer the one it started for.
    static func gone(_ name: String) -> RenewalError {
        RenewalError(.needsAttention, "context \(name) was removed", code: .removed)
    }

    private func next() -> UInt64 {
        lastIncarnation += 1
        return lastIncarnation
    }

    // MARK: Reads

    func record(_ name: String) -> ContextRecord? { contexts[name]?.record }
    func incarnation(_ name: String) -> UInt64? { contexts[name]?.incarnation }
    var names: [String] { Array(contexts.keys) }

    // MARK: Membership

    /// Takes over restored records (start-up) and schedules them; publishes their snapshots.
    func restore(_ records: [ContextRecord]) async {
        for record in records { contexts[record.name] = Owned(record: record, incarnation: next()) }
        // In a cluster the lease rounds decide which of them this daemon renews; until then it follows them all.
        let schedules = await scheduler.addMany(records.map { ($0.name, $0.session, $0.generation) }, held: fencing == nil)
        for record in records {
            if let schedule = schedules[record.name] { sessions.set(snapshot(record, schedule)) }
        }
    }

    /// Creates a context with no session yet (a new identity): stored first, then scheduled and published.
    /// Replaces nothing: an existing context of that name must be removed first.
    @discardableResult
    func create(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration,
                schedule: Bool = true) async throws -> UInt64 {
        try await inTurn(name) { try await createInTurn(name, kind: kind, registration, schedule: schedule) }
    }

    private func createInTurn(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration,
                              schedule: Bool) async throws -> UInt64 {
        guard contexts[name] == nil else {
            throw KeeperError(.store, "context \(name) exists already")
        }
        if let fencing {
            // Several daemons may start with one new identity at once: the first creates it, the others follow it,
            // and whoever takes its lease registers it, once.
            if try await fencing.insert(name, kind, registration) == nil {
                guard let stored = try await store.context(name) else { throw StoreError(.missing, "context \(name) vanished") }
                guard contexts[name] == nil else { throw KeeperError(.store, "context \(name) exists already") }
                follow(stored.record)
                publishKey(name, stored.registration)
                await scheduler.add(name, session: stored.session, generation: stored.generation, held: holds(name))
                await publish(name)
                return contexts[name]!.incarnation
            }
        } else {
            try await store.saveRegistration(name, kind: kind, registration)
        }
        guard contexts[name] == nil else { throw KeeperError(.store, "context \(name) exists already") }
        publishKey(name, registration)
        let owned = Owned(record: StoredContext(name: name, kind: kind, registration: registration).record,
                          incarnation: next())
        contexts[name] = owned
        if schedule {
            await scheduler.add(name, session: nil, held: holds(name))
            await publish(name)
        }
        return owned.incarnation
    }

    /// Creates a context that already has its first session (an OAuth user's, opened under a provisional name).
    func createLive(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration,
                    session: SessionInfo) async throws {
        try await inTurn(name) { try await createLiveInTurn(name, kind: kind, registration, session: session) }
    }

    private func createLiveInTurn(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration,
                                  session: SessionInfo) async throws {
        guard contexts[name] == nil else { throw KeeperError(.store, "context \(name) exists already") }
        if let fencing {
            // Created with its lease to this daemon, which renews it until a lease round gives it to another.
            guard let grant = try await fencing.insert(name, kind, registration) else {
                throw KeeperError(.store, "context \(name) exists already")
            }
            try await fencing.store.saveSession(name, session, generation: 1, registration: registration, fence: grant.fence,
                                                by: fencing.instance)
        } else {
            try await store.saveRegistration(name, kind: kind, registration)
            try await store.saveSession(name, session, generation: 1, registration: registration)
        }
        guard contexts[name] == nil else { throw KeeperError(.store, "context \(name) exists already") }
        publishKey(name, registration)
        contexts[name] = Owned(record: StoredContext(name: name, kind: kind, registration: registration, session: session,
                                                     generation: 1).record, incarnation: next())
        await scheduler.add(name, session: session, generation: 1, held: holds(name))
        await publish(name)
    }

    /// Removes a context: its token stops being handed out first (the snapshot goes), then its row and secrets
    /// are deleted, then the scheduler forgets it. Returns what was stored, so the caller can end the session at
    /// bunq afterwards; nil when there was no such context.
    func remove(_ name: String) async throws -> StoredContext? {
        try await inTurn(name) { try await removeInTurn(name) }
    }

    private func removeInTurn(_ name: String) async throws -> StoredContext? {
        guard let owned = contexts[name] else { return nil }
        sessions.remove(name)
        contexts[name] = nil
        // Read before the delete, to end the session at bunq afterwards; unreadable, there is nothing to end.
        let kind = owned.record.kind
        let stored = (try? await store.context(name)) ?? StoredContext(name: name, kind: kind, registration: IdentityRegistration(
            kind: kind == .provider ? .psd2Provider : kind == .apiKey ? .apiKey : .oauthUser))
        do {
            try await store.removeContext(name)
        } catch {
            // Not removed after all: it stays owned (a retried removal or reload finishes the job).
            contexts[name] = owned
            await publish(name)
            throw error
        }
        await scheduler.remove(name)
        signingKeys.forget(name)
        if let fencing { try? await fencing.store.announce(.removed(context: name, by: fencing.instance)) }
        return stored
    }

    // MARK: What other daemons did (a cluster)

    /// Owns a context another daemon created; scheduled as followed (renewed here only under its lease).
    private func follow(_ record: ContextRecord) {
        contexts[record.name] = Owned(record: record, incarnation: next())
    }

    /// A context that appeared in the store through another daemon: followed and published.
    func adoptNew(_ record: ContextRecord) async {
        guard contexts[record.name] == nil else { return }
        follow(record)
        await scheduler.add(record.name, session: record.session, generation: record.generation, held: holds(record.name))
        await publish(record.name)
    }

    /// A newer session another daemon committed for a known context: served from now on. Returns the published
    /// entry when it was newer.
    func adopt(_ record: ContextRecord) async -> SessionEntry? {
        guard var owned = contexts[record.name], record.generation > owned.record.generation, let session = record.session
        else { return nil }
        owned.record.session = session
        owned.record.generation = record.generation
        owned.record.serverPublicKeyPEM = record.serverPublicKeyPEM
        contexts[record.name] = owned
        guard await scheduler.adopt(record.name, session: session, generation: record.generation) else { return nil }
        return await publish(record.name)
    }

    /// A context another daemon removed: no longer served or scheduled here (the store has no row left to delete).
    func forget(_ name: String) async {
        guard contexts[name] != nil else { return }
        sessions.remove(name)
        contexts[name] = nil
        signingKeys.forget(name)
        await scheduler.remove(name)
    }

    /// Every context's kind and session expiry (for a metrics scrape).
    func kindsAndExpiry() -> [(String, StoredContext.Kind, Date?)] {
        contexts.map { ($0.key, $0.value.record.kind, $0.value.record.session?.expiresAt) }
    }

    /// The generation this daemon serves for one context (a notification's check: no pass over all of them).
    func generation(_ name: String) -> Int? { contexts[name]?.record.generation }

    /// The generation this daemon serves for each context.
    var generations: [String: Int] { contexts.mapValues(\.record.generation) }

    // MARK: Writes by a renewal (conditioned on its incarnation)

    /// A bootstrap step's result. Refused (`gone`) when the context is no longer `incarnation`.
    func saveRegistration(_ name: String, incarnation: UInt64, _ registration: IdentityRegistration) async throws {
        await turn(name)
        defer { endTurn(name) }
        guard contexts[name]?.incarnation == incarnation else { throw Self.gone(name) }
        if let fencing {
            try await fenced(name, fencing) { fence in
                try await fencing.store.updateRegistration(name, registration, fence: fence, by: fencing.instance)
            }
        } else {
            try await store.updateRegistration(name, registration)
        }
        // Forgotten meanwhile (another daemon removed it): the write was refused or will be deleted with the row.
        guard var owned = contexts[name], owned.incarnation == incarnation else { throw Self.gone(name) }
        publishKey(name, registration)
        owned.record.serverPublicKeyPEM = registration.serverPublicKeyPEM
        contexts[name] = owned
    }

    /// A new session, committed before anyone may use it. Refused (`gone`) when the context is no longer
    /// `incarnation`.
    func commitSession(_ name: String, incarnation: UInt64, _ session: SessionInfo, generation: Int,
                       registration: IdentityRegistration) async throws {
        await turn(name)
        defer { endTurn(name) }
        guard contexts[name]?.incarnation == incarnation else { throw Self.gone(name) }
        if let fencing {
            try await fenced(name, fencing) { fence in
                try await fencing.store.saveSession(name, session, generation: generation, registration: registration,
                                                    fence: fence, by: fencing.instance)
            }
        } else {
            try await store.saveSession(name, session, generation: generation, registration: registration)
        }
        guard var owned = contexts[name], owned.incarnation == incarnation else { throw Self.gone(name) }
        publishKey(name, registration)
        owned.record.session = session
        owned.record.generation = generation
        owned.record.serverPublicKeyPEM = registration.serverPublicKeyPEM
        contexts[name] = owned
    }

    /// A write under the context's lease: refused here once the lease ran out on this daemon's clock, and by the
    /// store once another daemon holds it (its fence moved on). Either way the renewal ends as `lease_lost`.
    private func fenced(_ name: String, _ fencing: Fencing, _ write: (Int64) async throws -> Void) async throws {
        guard let fence = fencing.book.fence(name) else { throw RenewalError.lostLease(name) }
        do {
            try await write(fence)
        } catch let error as StoreError where error.code == .fenced {
            fencing.book.remove([name])
            throw RenewalError.lostLease(name)
        }
    }

    // MARK: Snapshots

    /// Publishes the context's current snapshot (its record and the scheduler's view), or withdraws it when the
    /// context is gone. Returns the published entry.
    @discardableResult
    func publish(_ name: String) async -> SessionEntry? {
        guard let before = contexts[name]?.incarnation else {
            sessions.remove(name)
            return nil
        }
        let schedule = await scheduler.schedule(name)
        // The actor may have run a removal (or a removal and a new creation) while the scheduler answered: only
        // the owner's view after the answer counts.
        guard let owned = contexts[name] else {
            sessions.remove(name)
            return nil
        }
        guard owned.incarnation == before else { return await publish(name) }
        guard let schedule else {
            sessions.remove(name)
            return nil
        }
        let entry = snapshot(owned.record, schedule)
        sessions.set(entry)
        return entry
    }

    /// The hot path's view of a context. A token may be handed out only while the scheduler's session is valid
    /// beyond the margin; from then on the monotonic clock decides.
    private func snapshot(_ record: ContextRecord, _ schedule: ContextSchedule) -> SessionEntry {
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
