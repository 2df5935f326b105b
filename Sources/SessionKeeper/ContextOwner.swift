import BunqAPI
import Foundation

/// The one owner of every context's state. Every change — a bootstrap step, a renewal's new session, a removal,
/// an OAuth completion, a reload — goes through this actor, which writes the store and then publishes an
/// immutable snapshot (`LeaseEntry`) to the lease table the socket reads. Nothing else writes a context's row or
/// its snapshot.
///
/// Each context is owned under an *incarnation*: a number given when it is created (or restored) and never
/// reused. A renewal reads it when it starts and presents it with every write; once the context is removed (or
/// removed and created anew under the same name) those writes are refused, so an in-flight renewal cannot bring
/// a removed context back, in memory or in the store. A removal is the tombstone: the row is deleted (securely:
/// its pages are overwritten) and the incarnation retired.
actor ContextOwner {
    private struct Owned {
        var record: ContextRecord
        let incarnation: UInt64
    }

    private var contexts: [String: Owned] = [:]
    private var lastIncarnation: UInt64 = 0
    private let store: any StateBackend
    private let leases: LeaseTable
    private let scheduler: SessionScheduler<ContinuousClock>

    init(store: any StateBackend, leases: LeaseTable, scheduler: SessionScheduler<ContinuousClock>) {
        self.store = store
        self.leases = leases
        self.scheduler = scheduler
    }

    /// A write presented by a renewal of a context that is no longer the one it started for.
    static func gone(_ name: String) -> RenewalError {
        RenewalError(.needsAttention, "context \(name) was removed", code: "removed")
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
        let schedules = await scheduler.addMany(records.map { ($0.name, $0.session, $0.generation) })
        for record in records {
            if let schedule = schedules[record.name] { leases.set(Self.entry(record, schedule)) }
        }
    }

    /// Creates a context with no session yet (a new identity): stored first, then scheduled and published.
    /// Replaces nothing: an existing context of that name must be removed first.
    @discardableResult
    func create(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration,
                schedule: Bool = true) async throws -> UInt64 {
        guard contexts[name] == nil else {
            throw KeeperError(.store, "context \(name) exists already")
        }
        try store.saveRegistration(name, kind: kind, registration)
        let owned = Owned(record: StoredContext(name: name, kind: kind, registration: registration).record,
                          incarnation: next())
        contexts[name] = owned
        if schedule {
            await scheduler.add(name, session: nil)
            await publish(name)
        }
        return owned.incarnation
    }

    /// Creates a context that already has its first session (an OAuth user's, opened under a provisional name).
    func createLive(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration,
                    session: SessionInfo) async throws {
        guard contexts[name] == nil else { throw KeeperError(.store, "context \(name) exists already") }
        try store.saveRegistration(name, kind: kind, registration)
        try store.saveSession(name, session, generation: 1, registration: registration)
        contexts[name] = Owned(record: StoredContext(name: name, kind: kind, registration: registration, session: session,
                                                     generation: 1).record, incarnation: next())
        await scheduler.add(name, session: session, generation: 1)
        await publish(name)
    }

    /// Removes a context: its token stops being handed out first (the snapshot goes), then its row and secrets
    /// are deleted, then the scheduler forgets it. Returns what was stored, so the caller can end the session at
    /// bunq afterwards; nil when there was no such context.
    func remove(_ name: String) async throws -> StoredContext? {
        guard let owned = contexts[name] else { return nil }
        leases.remove(name)
        contexts[name] = nil
        // Read before the delete, to end the session at bunq afterwards; unreadable, there is nothing to end.
        let kind = owned.record.kind
        let stored = (try? store.context(name)) ?? StoredContext(name: name, kind: kind, registration: IdentityRegistration(
            kind: kind == .provider ? .psd2Provider : kind == .apiKey ? .apiKey : .oauthUser))
        do {
            try store.removeContext(name)
        } catch {
            // Not removed after all: it stays owned (a retried removal or reload finishes the job).
            contexts[name] = owned
            await publish(name)
            throw error
        }
        await scheduler.remove(name)
        return stored
    }

    // MARK: Writes by a renewal (conditioned on its incarnation)

    /// A bootstrap step's result. Refused (`gone`) when the context is no longer `incarnation`.
    func saveRegistration(_ name: String, incarnation: UInt64, _ registration: IdentityRegistration) throws {
        guard var owned = contexts[name], owned.incarnation == incarnation else { throw Self.gone(name) }
        try store.updateRegistration(name, registration)
        owned.record.serverPublicKeyPEM = registration.serverPublicKeyPEM
        contexts[name] = owned
    }

    /// A new session, committed before anyone may use it. Refused (`gone`) when the context is no longer
    /// `incarnation`.
    func commitSession(_ name: String, incarnation: UInt64, _ session: SessionInfo, generation: Int,
                       registration: IdentityRegistration) throws {
        guard var owned = contexts[name], owned.incarnation == incarnation else { throw Self.gone(name) }
        try store.saveSession(name, session, generation: generation, registration: registration)
        owned.record.session = session
        owned.record.generation = generation
        owned.record.serverPublicKeyPEM = registration.serverPublicKeyPEM
        contexts[name] = owned
    }

    // MARK: Snapshots

    /// Publishes the context's current snapshot (its record and the scheduler's view), or withdraws it when the
    /// context is gone. Returns the published entry.
    @discardableResult
    func publish(_ name: String) async -> LeaseEntry? {
        guard let before = contexts[name]?.incarnation else {
            leases.remove(name)
            return nil
        }
        let schedule = await scheduler.schedule(name)
        // The actor may have run a removal (or a removal and a new creation) while the scheduler answered: only
        // the owner's view after the answer counts.
        guard let owned = contexts[name] else {
            leases.remove(name)
            return nil
        }
        guard owned.incarnation == before else { return await publish(name) }
        guard let schedule else {
            leases.remove(name)
            return nil
        }
        let entry = Self.entry(owned.record, schedule)
        leases.set(entry)
        return entry
    }

    /// The hot path's view of a context. A token may be handed out only while the scheduler's session is valid
    /// beyond the margin; from then on the monotonic clock decides.
    static func entry(_ record: ContextRecord, _ schedule: ContextSchedule) -> LeaseEntry {
        var usableUntil: ContinuousClock.Instant?
        if [.live, .renewing, .retrying].contains(schedule.state), record.session != nil, let expiresAt = schedule.expiresAt {
            usableUntil = ContinuousClock.now + .seconds(expiresAt.addingTimeInterval(-schedule.margin).timeIntervalSinceNow)
        }
        return LeaseEntry(context: record.name, kind: record.kind, session: usableUntil == nil ? nil : record.session,
                          renewAt: schedule.renewAt, generation: schedule.generation,
                          serverPublicKeyPEM: record.serverPublicKeyPEM, usableUntil: usableUntil, state: schedule.state)
    }
}
