import BunqAPI
import Foundation
import PostgresNIO
import SessionKeeper

/// The cluster's side of the PostgreSQL store: membership, fenced leases, the egress groups' session-server slots
/// and `LISTEN/NOTIFY`. Every time is the server's `now()`, so no two daemons' clocks need to agree; every lease
/// change is one statement or one transaction, so two daemons never both take one lease.
extension PostgresState {
    /// The notification channel. Payloads are `KIND<TAB>INSTANCE<TAB>GENERATION<TAB>CONTEXT`: names and
    /// numbers, never a secret.
    static let channel = "bunq_sessiond"

    public func heartbeat(instance: String, process: String, egressGroup: String,
                          window: Double) async throws -> (members: [ClusterMember], contexts: Int) {
        try await transaction("heartbeat", "record this daemon's heartbeat") { connection in
            // An instance name is one process's: another live process under it (a cloned host, a copied
            // configuration) would hold the same leases, and fencing could not tell the two apart.
            let recorded = try await self.run(connection, """
                INSERT INTO cluster_member (instance, process, egress_group, heartbeat_at)
                VALUES (\(instance), \(process), \(egressGroup), now())
                ON CONFLICT (instance) DO UPDATE SET process = excluded.process, egress_group = excluded.egress_group,
                    heartbeat_at = excluded.heartbeat_at
                WHERE cluster_member.process = excluded.process
                   OR cluster_member.heartbeat_at <= now() - make_interval(secs => \(window))
                """)
            guard recorded.metadata.rows == 1 else {
                throw StoreError(.locked, "another daemon is running as cluster.instance \(instance) on \(self.settings.location): "
                    + "give each daemon its own instance name")
            }
            // Members gone for a day are forgotten: an instance renamed must not linger.
            _ = try await self.run(connection, "DELETE FROM cluster_member WHERE heartbeat_at < now() - interval '1 day'")
            let members = try await self.run(connection, """
                SELECT m.instance, m.egress_group,
                       (SELECT count(*) FROM lease l WHERE l.holder = m.instance AND l.expires_at > now())
                FROM cluster_member m WHERE m.heartbeat_at > now() - make_interval(secs => \(window)) ORDER BY m.instance
                """).rows.map { row in
                let (name, group, leases) = try row.decode((String, String, Int64).self)
                return ClusterMember(instance: name, egressGroup: group, leases: Int(leases))
            }
            let contexts = try await self.run(connection, "SELECT count(*) FROM context").rows.first.map { try $0.decode(Int64.self) } ?? 0
            return (members, Int(contexts))
        }
    }

    public func generations() async throws -> [String: Int] {
        try await call("read_generations", "read the generations") { connection in
            var generations: [String: Int] = [:]
            for row in try await self.run(connection, "SELECT name, generation FROM context").rows {
                let (name, generation) = try row.decode((String, Int64).self)
                generations[name] = Int(generation)
            }
            return generations
        }
    }

    public func renewLeases(instance: String, seconds: Double) async throws -> [LeaseGrant] {
        try await call("renew_leases", "extend this daemon's leases") { connection in
            try self.grants(try await self.run(connection, """
                UPDATE lease SET expires_at = now() + make_interval(secs => \(seconds))
                WHERE holder = \(instance) AND expires_at > now() RETURNING context, fence
                """))
        }
    }

    public func acquireLeases(instance: String, seconds: Double, limit: Int) async throws -> [LeaseGrant] {
        guard limit > 0 else { return [] }
        return try await transaction("acquire_leases", "take leases") { connection in
            // Never granted first (new contexts), then expired or released ones: their fence moves on, so the
            // previous holder's late writes fail. SKIP LOCKED: two daemons taking at once split them.
            var taken = try self.grants(try await self.run(connection, """
                INSERT INTO lease (context, holder, fence, expires_at)
                SELECT c.name, \(instance), 1, now() + make_interval(secs => \(seconds)) FROM context c
                WHERE NOT EXISTS (SELECT 1 FROM lease l WHERE l.context = c.name) ORDER BY random() LIMIT \(limit)
                ON CONFLICT (context) DO NOTHING RETURNING context, fence
                """))
            if taken.count < limit {
                taken += try self.grants(try await self.run(connection, """
                    UPDATE lease SET holder = \(instance), fence = fence + 1, expires_at = now() + make_interval(secs => \(seconds))
                    WHERE context IN (SELECT context FROM lease WHERE expires_at <= now() ORDER BY random()
                                      LIMIT \(limit - taken.count) FOR UPDATE SKIP LOCKED)
                    RETURNING context, fence
                    """))
            }
            return taken
        }
    }

    public func releaseLeases(instance: String, _ contexts: [String]) async throws {
        guard !contexts.isEmpty else { return }
        try await call("release_leases", "give leases back") { connection in
            _ = try await self.run(connection, "UPDATE lease SET expires_at = now() WHERE holder = \(instance) AND context = ANY(\(contexts))")
        }
    }

    public func leave(instance: String, spacing: Double) async throws {
        try await transaction("leave", "leave the cluster") { connection in
            _ = try await self.run(connection, "UPDATE lease SET expires_at = now() WHERE holder = \(instance) AND expires_at > now()")
            _ = try await self.run(connection, "DELETE FROM cluster_member WHERE instance = \(instance)")
            // A call cut short by the shutdown still counts at bunq: the slot opens one spacing from now, not at
            // the end of its hold, and never earlier (a restarted daemon must not call again at once).
            _ = try await self.run(connection, """
                UPDATE session_server_slot SET opens_at = least(opens_at, now() + make_interval(secs => \(spacing)))
                WHERE holder = \(instance) AND opens_at > now()
                """)
        }
    }

    public func insertRegistration(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration,
                                   by instance: String, leaseSeconds: Double) async throws -> LeaseGrant? {
        let sealed = try sealer.sealRegistration(registration, name)
        let now = Date().timeIntervalSince1970
        return try await transaction("insert_registration", "create context \(name)") { connection in
            let inserted = try await self.run(connection, """
                INSERT INTO context (name, kind, registration, server_public_key, created_at, updated_at)
                VALUES (\(name), \(kind.rawValue), \(sealed), \(registration.serverPublicKeyPEM), \(now), \(now))
                ON CONFLICT (name) DO NOTHING
                """)
            guard inserted.metadata.rows == 1 else { return nil }
            let grant = try self.grants(try await self.run(connection, """
                INSERT INTO lease (context, holder, fence, expires_at) VALUES (\(name), \(instance), 1, now() + make_interval(secs => \(leaseSeconds)))
                ON CONFLICT (context) DO UPDATE SET holder = excluded.holder, fence = lease.fence + 1, expires_at = excluded.expires_at
                RETURNING context, fence
                """)).first
            try await self.notify(connection, .changed(context: name, generation: 0, by: instance))
            return grant
        }
    }

    public func updateRegistration(_ name: String, _ registration: IdentityRegistration, fence: Int64, by instance: String) async throws {
        let sealed = try sealer.sealRegistration(registration, name)
        try await transaction("save_registration", "save the registration of \(name)") { connection in
            try await self.checkLease(connection, name, fence: fence, instance: instance)
            let result = try await self.run(connection, """
                UPDATE context SET registration = \(sealed), server_public_key = \(registration.serverPublicKeyPEM),
                    updated_at = \(Date().timeIntervalSince1970) WHERE name = \(name)
                """)
            guard result.metadata.rows == 1 else { throw StoreError(.missing, "context \(name) does not exist") }
        }
    }

    public func saveSession(_ name: String, _ session: SessionInfo, generation: Int, registration: IdentityRegistration,
                            fence: Int64, by instance: String) async throws {
        let token = try sealer.sealToken(session, name)
        let sealed = try sealer.sealRegistration(registration, name)
        try await transaction("save_session", "save the session of \(name)") { connection in
            try await self.checkLease(connection, name, fence: fence, instance: instance)
            let result = try await self.run(connection, """
                UPDATE context SET registration = \(sealed), server_public_key = \(registration.serverPublicKeyPEM),
                    generation = \(generation), updated_at = \(Date().timeIntervalSince1970)
                WHERE name = \(name) AND generation < \(generation)
                """)
            guard result.metadata.rows == 1 else {
                throw StoreError(.fenced, "context \(name) is at generation \(generation) or newer already")
            }
            _ = try await self.run(connection, try self.upsertSession(name, session, token))
            try await self.notify(connection, .changed(context: name, generation: generation, by: instance))
        }
    }

    /// Locks the context's lease row (a takeover waits for this transaction) and checks that `instance` still
    /// holds it under `fence`, unexpired by the server's clock at this very moment.
    private func checkLease(_ connection: PostgresConnection, _ name: String, fence: Int64, instance: String) async throws {
        let rows = try await self.run(connection, """
            SELECT holder, fence, expires_at > clock_timestamp() FROM lease WHERE context = \(name) FOR SHARE
            """).rows
        guard let row = rows.first else {
            let exists = try await self.run(connection, "SELECT 1 FROM context WHERE name = \(name)").rows.first != nil
            throw exists ? StoreError(.fenced, "nobody holds the lease of \(name)") : StoreError(.missing, "context \(name) does not exist")
        }
        let (holder, current, valid) = try row.decode((String, Int64, Bool).self)
        guard holder == instance, current == fence, valid else {
            throw StoreError(.fenced, "the lease of \(name) is no longer this daemon's (fence \(fence), now \(current))")
        }
    }

    public func claimSessionServer(egressGroup: String, instance: String, hold: Double) async throws -> Double? {
        try await transaction("claim_session_server", "claim the session-server slot of \(egressGroup)") { connection in
            let claimed = try await self.run(connection, """
                INSERT INTO session_server_slot (egress_group, holder, opens_at)
                VALUES (\(egressGroup), \(instance), now() + make_interval(secs => \(hold)))
                ON CONFLICT (egress_group) DO UPDATE SET holder = excluded.holder, opens_at = excluded.opens_at
                WHERE session_server_slot.opens_at <= now()
                """)
            if claimed.metadata.rows == 1 { return nil }
            let wait = try await self.run(connection, """
                SELECT extract(epoch FROM opens_at - now())::float8 FROM session_server_slot WHERE egress_group = \(egressGroup)
                """).rows.first.map { try $0.decode(Double.self) }
            return max(0.01, wait ?? 0.01)
        }
    }

    public func releaseSessionServer(egressGroup: String, instance: String, spacing: Double) async throws {
        try await call("release_session_server", "release the session-server slot of \(egressGroup)") { connection in
            _ = try await self.run(connection, """
                UPDATE session_server_slot SET opens_at = now() + make_interval(secs => \(spacing))
                WHERE egress_group = \(egressGroup) AND holder = \(instance)
                """)
        }
    }

    public func announce(_ change: StoreChange) async throws {
        try await call("announce", "notify the other daemons") { connection in try await self.notify(connection, change) }
    }

    /// Queued with the transaction: the others hear of a change once it is committed, never before.
    private func notify(_ connection: PostgresConnection, _ change: StoreChange) async throws {
        let payload: String
        switch change {
        case .changed(let context, let generation, let by): payload = "changed\t\(by)\t\(generation)\t\(context)"
        case .removed(let context, let by): payload = "removed\t\(by)\t0\t\(context)"
        case .renewalRequested(let context, let invalid, let by): payload = "renew\t\(by)\t\(invalid ?? -1)\t\(context)"
        case .resync: return
        }
        _ = try await self.run(connection, "SELECT pg_notify(\(Self.channel), \(payload))")
    }

    static func parse(_ payload: String) -> StoreChange? {
        let fields = payload.split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false)
        guard fields.count == 4, let generation = Int(fields[2]) else { return nil }
        let by = String(fields[1]), context = String(fields[3])
        switch fields[0] {
        case "changed": return .changed(context: context, generation: generation, by: by)
        case "removed": return .removed(context: context, by: by)
        case "renew": return .renewalRequested(context: context, invalid: generation < 0 ? nil : generation, by: by)
        default: return nil
        }
    }

    public func listen(_ handle: @escaping @Sendable (StoreChange) async -> Void) async {
        var failures = 0
        // Listens until the connection ends, then reconnects after a backoff; the backoff's sleep ends the loop
        // once the task is cancelled, and nothing connects once cancelled.
        var running = !Task.isCancelled
        while running {
            do {
                let connection = try await connectAsync()
                do {
                    try await connection.listen(on: Self.channel) { notifications in
                        // Whatever was committed before LISTEN took effect was not heard: read everything once.
                        failures = 0
                        await handle(.resync)
                        for try await notification in notifications {
                            if let change = Self.parse(notification.payload) { await handle(change) }
                        }
                    }
                } catch {
                    logger.debug("notifications interrupted", metadata: ["bunq.error": "\(Self.describe(error))"])
                }
                try? await connection.close()
            } catch {
                logger.debug("cannot listen for notifications", metadata: ["bunq.error": "\(Self.describe(error))"])
            }
            failures += 1
            running = await Self.pause(.seconds(min(10, 0.25 * Double(1 << min(failures, 6)))))
        }
    }

    /// Sleeps `duration`; false when the task is cancelled (before or during the sleep).
    private static func pause(_ duration: Duration) async -> Bool {
        guard !Task.isCancelled else { return false }
        do {
            try await Task.sleep(for: duration)
            return true
        } catch {
            return false
        }
    }

    private func grants(_ result: PostgresQueryResult) throws -> [LeaseGrant] {
        try result.rows.map { row in
            let (context, fence) = try row.decode((String, Int64).self)
            return LeaseGrant(context: context, fence: fence)
        }
    }
}
