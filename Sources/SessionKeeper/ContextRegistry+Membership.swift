import BunqAPI
import Foundation

/// Contexts coming and going: restored at start, created (stored first), removed (the tombstone), and in a
/// cluster followed, adopted and forgotten as other daemons change the store.
extension ContextRegistry {
    /// Takes over restored records (start-up) and schedules them; publishes their snapshots.
    public func restore(_ records: [ContextRecord]) {
        let at = now, skew = skew
        // In a cluster the lease rounds decide which of them this daemon renews; until then it follows them all.
        for record in records {
            contexts[record.name] = Owned(record: record, incarnation: nextIncarnation())
            planner.add(record.name, session: record.session?.shifted(by: skew), generation: record.generation,
                        held: fencing == nil, now: at)
        }
        for record in records { publish(record.name) }
        wake.signal()
    }

    /// Schedules a context that is owned already (`create(schedule: false)`) and publishes it.
    private func schedule(_ name: String, session: SessionInfo?, generation: Int) {
        planner.add(name, session: session?.shifted(by: skew), generation: generation, held: holdsLease(name), now: now)
        publish(name)
        wake.signal()
    }

    /// Creates a context with no session yet (a new identity): stored first, then scheduled and published.
    /// Replaces nothing: an existing context of that name must be removed first. With `schedule: false` it is
    /// owned but not renewed until `scheduleAwaitingFirstSession`.
    @discardableResult
    func create(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration,
                schedule: Bool = true) async throws -> UInt64 {
        try await inTurn(name) { try await createInTurn(name, kind: kind, registration, schedule: schedule) }
    }

    private func createInTurn(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration,
                              schedule scheduled: Bool) async throws -> UInt64 {
        guard contexts[name] == nil else {
            throw KeeperError(.store, "context \(name) exists already")
        }
        if let fencing {
            // Several daemons may start with one new identity at once: the first creates it, the others follow it,
            // and whoever takes its lease registers it, once.
            if try await insertLeased(name, kind, registration, fencing) == nil {
                guard let stored = try await store.context(name) else { throw StoreError(.missing, "context \(name) vanished") }
                guard contexts[name] == nil else { throw KeeperError(.store, "context \(name) exists already") }
                let incarnation = nextIncarnation()
                contexts[name] = Owned(record: stored.record, incarnation: incarnation)
                publishKey(name, stored.registration)
                schedule(name, session: stored.session, generation: stored.generation)
                return incarnation
            }
        } else {
            try await store.saveRegistration(name, kind: kind, registration)
        }
        guard contexts[name] == nil else { throw KeeperError(.store, "context \(name) exists already") }
        let incarnation = nextIncarnation()
        contexts[name] = Owned(record: StoredContext(name: name, kind: kind, registration: registration).record,
                               incarnation: incarnation)
        publishKey(name, registration)
        if scheduled { schedule(name, session: nil, generation: 0) }
        return incarnation
    }

    /// Schedules a context created with `schedule: false` and waits for its first attempt at a session: the new
    /// session, or the failure (it keeps retrying in the background when the failure is retryable). Its snapshot
    /// is published either way.
    func scheduleAwaitingFirstSession(_ name: String) async -> Result<SessionInfo, RenewalError> {
        guard contexts[name] != nil else { return .failure(Self.gone(name)) }
        schedule(name, session: nil, generation: 0)
        let outcome = await waiters.wait(for: name)
        publish(name)
        return outcome
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
            guard let grant = try await insertLeased(name, kind, registration, fencing) else {
                throw KeeperError(.store, "context \(name) exists already")
            }
            try await fencing.store.saveSession(name, session, generation: 1, registration: registration, fence: grant.fence,
                                                by: fencing.instance)
        } else {
            try await store.saveRegistration(name, kind: kind, registration)
            try await store.saveSession(name, session, generation: 1, registration: registration)
        }
        guard contexts[name] == nil else { throw KeeperError(.store, "context \(name) exists already") }
        contexts[name] = Owned(record: StoredContext(name: name, kind: kind, registration: registration, session: session,
                                                     generation: 1).record, incarnation: nextIncarnation())
        publishKey(name, registration)
        schedule(name, session: session, generation: 1)
    }

    /// Removes a context: its token stops being handed out first (the snapshot goes), then its row and secrets
    /// are deleted, then its schedule, lease and key are forgotten. Returns what was stored, so the caller can
    /// end the session at bunq afterwards; nil when there was no such context.
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
            publish(name)
            throw error
        }
        unschedule(name)
        if let fencing { try? await fencing.store.announce(.removed(context: name, by: fencing.instance)) }
        return stored
    }

    /// Forgets a context's schedule and key, and whoever waits for its renewal hears that it was removed.
    private func unschedule(_ name: String) {
        planner.remove(name)
        signingKeys.forget(name)
        waiters.resume(name, with: .failure(RenewalError(.needsAttention, "the context was removed", code: .removed)))
        wake.signal()
    }

    // MARK: What other daemons did (a cluster)

    /// A context that appeared in the store through another daemon: followed (renewed here only under its lease)
    /// and published. Not while a change of that name is under way here: a lease round or a resync reads the
    /// store between a creation's write and its taking the context over (then the row is this daemon's own), or
    /// between a removal's letting go and its delete (then the row is about to go); either change finishes the
    /// job, and the next resync catches up with anything else.
    func adoptNew(_ record: ContextRecord) {
        guard contexts[record.name] == nil, !isChanging(record.name) else { return }
        contexts[record.name] = Owned(record: record, incarnation: nextIncarnation())
        schedule(record.name, session: record.session, generation: record.generation)
    }

    /// A newer session another daemon committed for a known context: served from now on. Returns the published
    /// entry when it was newer.
    func adopt(_ record: ContextRecord) -> SessionEntry? {
        guard var owned = contexts[record.name], record.generation > owned.record.generation, let session = record.session
        else { return nil }
        owned.record.session = session
        owned.record.generation = record.generation
        owned.record.serverPublicKeyPEM = record.serverPublicKeyPEM
        contexts[record.name] = owned
        guard planner.adopt(record.name, session: session.shifted(by: skew), generation: record.generation, now: now)
        else { return nil }
        waiters.resume(record.name, with: .success(session))
        wake.signal()
        return publish(record.name)
    }

    /// A context another daemon removed: no longer served or scheduled here (the store has no row left to delete).
    func forget(_ name: String) {
        guard contexts[name] != nil else { return }
        sessions.remove(name)
        contexts[name] = nil
        unschedule(name)
    }
}
