import BunqAPI
import BunqCrypto
import Foundation
import GRDB
import Logging

/// A context as stored: its registration with bunq and its current session.
public struct StoredContext: Sendable, Equatable {
    public enum Kind: String, Sendable, Codable {
        case provider
        case apiKey = "api_key"
        case oauthUser = "oauth_user"
    }

    public let name: String
    public let kind: Kind
    public var registration: IdentityRegistration
    public var session: SessionInfo?
    public var generation: Int

    public init(name: String, kind: Kind, registration: IdentityRegistration, session: SessionInfo? = nil,
                generation: Int = 0) {
        self.name = name
        self.kind = kind
        self.registration = registration
        self.session = session
        self.generation = generation
    }
}

/// What the keeper holds in memory for every context: enough to schedule it and serve its token, not its secrets
/// (the registration stays sealed in the store until a renewal or a signature needs it).
public struct ContextRecord: Sendable, Equatable {
    public let name: String
    public let kind: StoredContext.Kind
    public var session: SessionInfo?
    public var generation: Int
    public var serverPublicKeyPEM: String?

    public init(name: String, kind: StoredContext.Kind, session: SessionInfo?, generation: Int, serverPublicKeyPEM: String?) {
        self.name = name
        self.kind = kind
        self.session = session
        self.generation = generation
        self.serverPublicKeyPEM = serverPublicKeyPEM
    }
}

extension StoredContext {
    public var record: ContextRecord {
        ContextRecord(name: name, kind: kind, session: session, generation: generation,
                      serverPublicKeyPEM: registration.serverPublicKeyPEM)
    }
}

/// The daemon's durable state: SQLite (WAL) through GRDB in the state directory, every secret sealed with
/// AES-256-GCM under the master key, bound to its row and column by the associated data. Every write is a
/// transaction, committed before the value it records is used.
public final class StateStore: StateBackend {
    public static let fileName = "bunq-sessiond.sqlite"
    private let pool: DatabasePool
    private let sealer: StateSealer
    public let path: String
    public var location: String { path }
    public let calls: StoreCalls

    /// Opens (creating when needed) the store in `directory` (created 0700) with files 0600, migrates it, and
    /// checks that `masterKey` (read from `keySource`) is the key that sealed it: a wrong key is an error here,
    /// at start, not a decryption failure per context later.
    ///
    /// Opening is synchronous (a local file, once, before anything is served); every call after it is
    /// asynchronous, on GRDB's own queues, within `timeout`. SQLite waits for another writer's lock at most that
    /// long too (its busy timeout), so a write transaction held elsewhere costs a call the deadline, not more.
    public init(directory: String, masterKey: SymmetricKey, keySource: String = "the master key",
                timeout: Duration = .seconds(2), logger: Logger = Logger(label: "bunq-sessiond")) throws {
        try Self.prepareDirectory(directory)
        path = directory + "/" + Self.fileName
        sealer = StateSealer(key: masterKey)
        calls = StoreCalls(location: path, timeout: timeout, logger: logger)
        do {
            var configuration = Configuration()
            configuration.busyMode = .timeout(max(0.05, Double(timeout.components.seconds)
                + Double(timeout.components.attoseconds) / 1e18))
            // WAL's default NORMAL survives a crash but may lose the last commits to a power loss; a session or
            // the marker that prevents a second device must not be lost once used.
            // secure_delete: a removed context's pages are overwritten, not left in the file's free list.
            configuration.prepareDatabase { db in
                try db.execute(sql: "PRAGMA synchronous = FULL")
                try db.execute(sql: "PRAGMA secure_delete = ON")
            }
            pool = try DatabasePool(path: path, configuration: configuration)
            try Self.migrator.migrate(pool)
        } catch {
            throw StoreError(.database, "cannot open the state database \(path)", cause: error)
        }
        for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
            chmod(path + suffix, 0o600)
        }
        try checkKey(source: keySource)
    }

    /// The key check: a value sealed under the master key when the state was made (or, for a state older than
    /// the check, the first context's registration). One that does not open means another key sealed the state.
    private func checkKey(source: String) throws {
        let (check, sample) = try wrap("read the key check") {
            try pool.read { db in
                (try Data.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'key_check'"),
                 try Row.fetchOne(db, sql: "SELECT name, registration FROM context ORDER BY name LIMIT 1"))
            }
        }
        let wrongKey = StateSealer.wrongKey(source, path)
        if let check {
            guard (try? sealer.open(check, "meta", "key_check")) != nil else { throw wrongKey }
            return
        }
        if let sample {
            guard (try? sealer.open(sample["registration"], sample["name"], "registration")) != nil else { throw wrongKey }
        }
        let sealed = try sealer.seal(StateSealer.keyCheckPlaintext, "meta", "key_check")
        try wrap("write the key check") {
            try pool.write { db in
                try db.execute(sql: "INSERT OR IGNORE INTO meta (key, value) VALUES ('key_check', ?)", arguments: [sealed])
            }
        }
    }

    /// Nothing to do: opening migrated and checked the key.
    public func prepare() async throws {}

    /// SQLite's `synchronous` setting on the store's connections (2: FULL).
    public func synchronousSetting() async throws -> Int {
        try await pool.read { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
    }

    static func prepareDirectory(_ directory: String) throws {
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
            } catch {
                throw StoreError(.permissions, "cannot create the state directory \(directory)", cause: error)
            }
        } else if !isDirectory.boolValue {
            throw StoreError(.permissions, "the state directory \(directory) is not a directory")
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "context") { table in
                table.primaryKey("name", .text)
                table.column("kind", .text).notNull()
                table.column("registration", .blob).notNull()
                table.column("generation", .integer).notNull().defaults(to: 0)
                table.column("created_at", .double).notNull()
                table.column("updated_at", .double).notNull()
            }
            try db.create(table: "session") { table in
                table.primaryKey("context", .text).references("context", onDelete: .cascade)
                table.column("session_id", .integer).notNull()
                table.column("token", .blob).notNull()
                table.column("user_id", .integer).notNull()
                table.column("created", .double).notNull()
                table.column("expires_at", .double).notNull()
            }
        }
        // v2: bunq's server key (public) in the clear, so start-up need not decrypt every registration.
        migrator.registerMigration("v2") { db in
            try db.alter(table: "context") { table in table.add(column: "server_public_key", .text) }
        }
        // v3: the key check (a value sealed under the master key, so a wrong key is caught at start).
        migrator.registerMigration("v3") { db in
            try db.create(table: "meta") { table in
                table.primaryKey("key", .text)
                table.column("value", .blob).notNull()
            }
        }
        // v4: pending OAuth states (by digest), so a restart or another daemon can complete what one issued.
        migrator.registerMigration("v4") { db in
            try db.create(table: "oauth_state") { table in
                table.primaryKey("digest", .text)
                table.column("redirect_uri", .text).notNull()
                table.column("expires_at", .double).notNull()
            }
        }
        return migrator
    }

    /// The schema migrations applied, in order.
    public func appliedMigrations() async throws -> [String] {
        try await calls.run("read_migrations") { [pool] in try await pool.read { try Self.migrator.appliedMigrations($0) } }
    }

    // MARK: Reads

    public func contexts() async throws -> [StoredContext] {
        try await call("read_contexts", "read the contexts") { [self] in
            try await pool.read { db in
                try Row.fetchAll(db, sql: """
                    SELECT c.name, c.kind, c.registration, c.generation, s.session_id, s.token, s.user_id, s.created, s.expires_at
                    FROM context c LEFT JOIN session s ON s.context = c.name ORDER BY c.name
                    """).map(decodeContext)
            }
        }
    }

    public func context(_ name: String) async throws -> StoredContext? {
        try await call("read_context", "read context \(name)") { [self] in
            try await pool.read { db in
                try Row.fetchOne(db, sql: """
                    SELECT c.name, c.kind, c.registration, c.generation, s.session_id, s.token, s.user_id, s.created, s.expires_at
                    FROM context c LEFT JOIN session s ON s.context = c.name WHERE c.name = ?
                    """, arguments: [name]).map(decodeContext)
            }
        }
    }

    /// What start-up needs of every context, without decrypting registrations: name, kind, generation, session
    /// and bunq's (public) server key. Identical server keys share one string.
    public func records() async throws -> [ContextRecord] {
        try await call("read_records", "read the context records") { [self] in
            try await pool.read { db in
                var interned: [String: String] = [:]
                return try Row.fetchAll(db, sql: """
                    SELECT c.name, c.kind, c.generation, c.server_public_key, s.session_id, s.token, s.user_id, s.created,
                           s.expires_at
                    FROM context c LEFT JOIN session s ON s.context = c.name ORDER BY c.name
                    """).map { row in
                    let name: String = row["name"]
                    guard let kind = StoredContext.Kind(rawValue: row["kind"]) else {
                        throw StoreError(.corrupt, "context \(name) has an unknown kind")
                    }
                    let serverKey: String? = (row["server_public_key"] as String?).map { key in
                        if let shared = interned[key] { return shared }
                        interned[key] = key
                        return key
                    }
                    return ContextRecord(name: name, kind: kind, session: try decodeSession(row, name), generation: row["generation"],
                                         serverPublicKeyPEM: serverKey)
                }
            }
        }
    }

    private func decodeSession(_ row: Row, _ name: String) throws -> SessionInfo? {
        guard let sessionId: Int = row["session_id"] else { return nil }
        let token = try sealer.openToken(row["token"], name)
        return SessionInfo(id: sessionId, token: token, userId: row["user_id"],
                           created: Date(timeIntervalSince1970: row["created"]),
                           expiresAt: Date(timeIntervalSince1970: row["expires_at"]))
    }

    private func decodeContext(_ row: Row) throws -> StoredContext {
        let name: String = row["name"]
        guard let kind = StoredContext.Kind(rawValue: row["kind"]) else {
            throw StoreError(.corrupt, "context \(name) has an unknown kind")
        }
        let registration = try sealer.openRegistration(row["registration"], name)
        let session = try decodeSession(row, name)
        return StoredContext(name: name, kind: kind, registration: registration, session: session,
                             generation: row["generation"])
    }

    // MARK: OAuth states

    public func saveOAuthState(_ state: String, redirectURI: String, expiresAt: Date) async throws {
        try await call("save_oauth_state", "save an OAuth state") { [self] in
            try await pool.write { db in
                try db.execute(sql: "DELETE FROM oauth_state WHERE expires_at <= ?", arguments: [Date().timeIntervalSince1970])
                try db.execute(sql: "INSERT OR REPLACE INTO oauth_state (digest, redirect_uri, expires_at) VALUES (?, ?, ?)",
                               arguments: [StateSealer.stateDigest(state), redirectURI, expiresAt.timeIntervalSince1970])
            }
        }
    }

    public func takeOAuthState(_ state: String, now: Date) async throws -> String? {
        try await call("take_oauth_state", "take an OAuth state") { [self] in
            try await pool.write { db in
                let row = try Row.fetchOne(db, sql: "DELETE FROM oauth_state WHERE digest = ? RETURNING redirect_uri, expires_at",
                                           arguments: [StateSealer.stateDigest(state)])
                guard let row, (row["expires_at"] as Double) > now.timeIntervalSince1970 else { return nil }
                return row["redirect_uri"]
            }
        }
    }

    // MARK: Writes (each a transaction, durable before the caller goes on)

    /// Stores a context's registration, creating the context when new.
    public func saveRegistration(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration) async throws {
        let sealed = try sealer.sealRegistration(registration, name)
        try await call("save_registration", "save the registration of \(name)") { [self] in
            try await pool.write { db in
                let now = Date().timeIntervalSince1970
                try db.execute(sql: """
                    INSERT INTO context (name, kind, registration, server_public_key, created_at, updated_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT(name) DO UPDATE SET registration = excluded.registration,
                        server_public_key = excluded.server_public_key, updated_at = excluded.updated_at
                    """, arguments: [name, kind.rawValue, sealed, registration.serverPublicKeyPEM, now, now])
            }
        }
    }

    /// Stores a bootstrap step's registration of an existing context; a context removed meanwhile is not
    /// re-created (`missing`).
    public func updateRegistration(_ name: String, _ registration: IdentityRegistration) async throws {
        let sealed = try sealer.sealRegistration(registration, name)
        try await call("save_registration", "save the registration of \(name)") { [self] in
            try await pool.write { db in
                try db.execute(sql: """
                    UPDATE context SET registration = ?, server_public_key = ?, updated_at = ? WHERE name = ?
                    """, arguments: [sealed, registration.serverPublicKeyPEM, Date().timeIntervalSince1970, name])
                guard db.changesCount == 1 else { throw StoreError(.missing, "context \(name) does not exist") }
            }
        }
    }

    /// Stores a new session together with the registration that opened it and the new generation.
    public func saveSession(_ name: String, _ session: SessionInfo, generation: Int,
                            registration: IdentityRegistration) async throws {
        let sealedToken = try sealer.sealToken(session, name)
        let sealedRegistration = try sealer.sealRegistration(registration, name)
        try await call("save_session", "save the session of \(name)") { [self] in
            try await pool.write { db in
                try db.execute(sql: """
                    UPDATE context SET registration = ?, server_public_key = ?, generation = ?, updated_at = ? WHERE name = ?
                    """, arguments: [sealedRegistration, registration.serverPublicKeyPEM, generation,
                                     Date().timeIntervalSince1970, name])
                guard db.changesCount == 1 else { throw StoreError(.missing, "context \(name) does not exist") }
                try db.execute(sql: """
                    INSERT OR REPLACE INTO session (context, session_id, token, user_id, created, expires_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """, arguments: [name, session.id, sealedToken, session.userId, session.created.timeIntervalSince1970,
                                     session.expiresAt.timeIntervalSince1970])
            }
        }
    }

    /// Stores many contexts in one transaction (imports, benchmarks); existing names are replaced.
    public func importContexts(_ contexts: [StoredContext]) async throws {
        let sealed = try contexts.map { context in
            (context, try sealer.sealRegistration(context.registration, context.name),
             try context.session.map { try sealer.sealToken($0, context.name) })
        }
        try await call("import_contexts", "import \(contexts.count) contexts", timeout: .seconds(600)) { [self] in
            try await pool.write { db in
                let now = Date().timeIntervalSince1970
                for (context, registration, token) in sealed {
                    try db.execute(sql: """
                        INSERT OR REPLACE INTO context (name, kind, registration, server_public_key, generation, created_at,
                                                        updated_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?)
                        """, arguments: [context.name, context.kind.rawValue, registration,
                                         context.registration.serverPublicKeyPEM, context.generation, now, now])
                    if let session = context.session, let token {
                        try db.execute(sql: """
                            INSERT OR REPLACE INTO session (context, session_id, token, user_id, created, expires_at)
                            VALUES (?, ?, ?, ?, ?, ?)
                            """, arguments: [context.name, session.id, token, session.userId,
                                             session.created.timeIntervalSince1970, session.expiresAt.timeIntervalSince1970])
                    }
                }
            }
        }
    }

    /// Forgets a context and its secrets: the rows are deleted with their pages overwritten (`secure_delete`),
    /// and the write-ahead log is checkpointed and truncated so no copy of them stays there either.
    public func removeContext(_ name: String) async throws {
        try await call("remove_context", "remove \(name)") { [self] in
            try await pool.write { db in
                try db.execute(sql: "DELETE FROM session WHERE context = ?", arguments: [name])
                try db.execute(sql: "DELETE FROM context WHERE name = ?", arguments: [name])
            }
        }
        // Best effort: a reader in progress can keep the log from being truncated now; the next removal or
        // checkpoint does it.
        _ = try? await pool.writeWithoutTransaction { db in try db.checkpoint(.truncate) }
    }

    /// A call within the deadline, its failures as `StoreError`s naming the file.
    private func call<T: Sendable>(_ operation: String, _ what: String, timeout: Duration? = nil,
                                   _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await calls.run(operation, timeout: timeout) { [path] in
            do {
                return try await body()
            } catch let error as StoreError {
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch let error as DatabaseError where error.resultCode == .SQLITE_BUSY {
                // Another writer held the database for the whole deadline (SQLite's busy timeout is the deadline).
                throw StoreError(.timeout, "the state database \(path) stayed locked by another writer", cause: error)
            } catch {
                throw StoreError(.database, "cannot \(what) in \(path)", cause: error)
            }
        }
    }

    private func wrap<T>(_ what: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.database, "cannot \(what) in \(path)", cause: error)
        }
    }
}
