import BunqAPI
import BunqCrypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import SessionKeeper
import Synchronization

/// The state in PostgreSQL, for several daemons on one store: the same rows as the SQLite store, every secret
/// sealed the same way under the same master key (which every daemon must be given), schema migrations applied
/// once under an advisory lock however many daemons start together, and a key check that refuses a daemon whose
/// key did not seal the store.
///
/// One connection, used by one call at a time (the calls block their thread, as SQLite's do; never on an event
/// loop); a connection that broke is replaced by the next call, so a PostgreSQL restart costs the calls made while
/// it is down, not the daemon.
public final class PostgresState: ClusterStore {
    public let settings: PostgresSettings
    public var location: String { settings.location }
    let sealer: StateSealer
    let logger: Logger
    private let connection = Mutex<PostgresConnection?>(nil)
    private let nextID = Atomic<Int>(1)
    /// How long a call waits to connect before it fails.
    static let connectTimeout = TimeAmount.seconds(10)

    /// Migrations in order: name and statements. Applied ones are recorded in `bunq_migrations`.
    public static let migrations: [(name: String, statements: [String])] = [
        ("v1", [
            """
            CREATE TABLE context (
                name text PRIMARY KEY, kind text NOT NULL, registration bytea NOT NULL,
                generation bigint NOT NULL DEFAULT 0, server_public_key text,
                created_at double precision NOT NULL, updated_at double precision NOT NULL)
            """,
            """
            CREATE TABLE session (
                context text PRIMARY KEY REFERENCES context(name) ON DELETE CASCADE, session_id bigint NOT NULL,
                token bytea NOT NULL, user_id bigint NOT NULL, created double precision NOT NULL,
                expires_at double precision NOT NULL)
            """,
            "CREATE TABLE meta (key text PRIMARY KEY, value bytea NOT NULL)",
        ]),
        ("v2", ["CREATE TABLE oauth_state (digest text PRIMARY KEY, redirect_uri text NOT NULL, expires_at double precision NOT NULL)"]),
        // A cluster: who is alive, who renews which context (fenced), each egress group's session-server slot.
        // Times are the server's (timestamptz, now()), so the daemons' clocks never have to agree.
        ("v3", [
            """
            CREATE TABLE cluster_member (
                instance text PRIMARY KEY, process text NOT NULL, egress_group text NOT NULL,
                heartbeat_at timestamptz NOT NULL)
            """,
            """
            CREATE TABLE lease (
                context text PRIMARY KEY REFERENCES context(name) ON DELETE CASCADE, holder text NOT NULL,
                fence bigint NOT NULL, expires_at timestamptz NOT NULL)
            """,
            "CREATE INDEX lease_holder ON lease (holder)",
            "CREATE TABLE session_server_slot (egress_group text PRIMARY KEY, holder text NOT NULL, opens_at timestamptz NOT NULL)",
        ]),
    ]
    /// The advisory lock that serializes migrations and the key check across daemons.
    static let migrationLock = 0x6275_6e71_7364 // "bunqsd"

    /// Connects, migrates and checks `masterKey` (read from `keySource`) against the store's key check.
    public init(settings: PostgresSettings, masterKey: SymmetricKey, keySource: String, logger: Logger) throws {
        self.settings = settings
        sealer = StateSealer(key: masterKey)
        self.logger = logger
        try transaction("migrate") { connection in
            _ = try run(connection, "SELECT pg_advisory_xact_lock(\(Self.migrationLock))")
            _ = try run(connection, "CREATE TABLE IF NOT EXISTS bunq_migrations (name text PRIMARY KEY, applied_at double precision NOT NULL)")
            let applied = Set(try run(connection, "SELECT name FROM bunq_migrations").rows.map { try $0.decode(String.self) })
            for migration in Self.migrations where !applied.contains(migration.name) {
                for statement in migration.statements { _ = try run(connection, PostgresQuery(unsafeSQL: statement)) }
                _ = try run(connection, "INSERT INTO bunq_migrations (name, applied_at) VALUES (\(migration.name), \(Date().timeIntervalSince1970))")
            }
            // The first daemon seals the check; every later one must open it.
            let sealed = try sealer.seal(StateSealer.keyCheckPlaintext, "meta", "key_check")
            _ = try run(connection, "INSERT INTO meta (key, value) VALUES ('key_check', \(sealed)) ON CONFLICT (key) DO NOTHING")
            let check = try run(connection, "SELECT value FROM meta WHERE key = 'key_check'").rows.first.map { try $0.decode(Data.self) }
            guard let check, (try? sealer.open(check, "meta", "key_check")) != nil else {
                throw StateSealer.wrongKey(keySource, settings.location)
            }
        }
    }

    deinit {
        // A connection must be closed before it goes; the closure keeps it until then.
        if let connection = connection.withLock({ $0 }), !connection.isClosed {
            connection.close().whenComplete { _ in withExtendedLifetime(connection) {} }
        }
    }

    public func appliedMigrations() throws -> [String] {
        try call("read the migrations") { connection in
            try run(connection, "SELECT name FROM bunq_migrations ORDER BY name").rows.map { try $0.decode(String.self) }
        }
    }

    // MARK: Reads

    static let contextColumns = """
        SELECT c.name, c.kind, c.registration, c.generation, s.session_id, s.token, s.user_id, s.created, s.expires_at
        FROM context c LEFT JOIN session s ON s.context = c.name
        """

    public func contexts() throws -> [StoredContext] {
        try call("read the contexts") { connection in
            try run(connection, PostgresQuery(unsafeSQL: Self.contextColumns + " ORDER BY c.name")).rows.map(decodeContext)
        }
    }

    public func context(_ name: String) throws -> StoredContext? {
        try call("read context \(name)") { connection in
            try run(connection, "\(unescaped: Self.contextColumns) WHERE c.name = \(name)").rows.first.map(decodeContext)
        }
    }

    public func records() throws -> [ContextRecord] {
        try call("read the context records") { connection in
            var interned: [String: String] = [:]
            return try run(connection, """
                SELECT c.name, c.kind, c.generation, c.server_public_key, s.session_id, s.token, s.user_id, s.created,
                       s.expires_at
                FROM context c LEFT JOIN session s ON s.context = c.name ORDER BY c.name
                """).rows.map { row in
                let columns = row.makeRandomAccess()
                let name = try columns["name"].decode(String.self)
                let serverKey = try columns["server_public_key"].decode(String?.self).map { key in
                    if let shared = interned[key] { return shared }
                    interned[key] = key
                    return key
                }
                return ContextRecord(name: name, kind: try kind(columns, name), session: try decodeSession(columns, name),
                                     generation: Int(try columns["generation"].decode(Int64.self)), serverPublicKeyPEM: serverKey)
            }
        }
    }

    private func kind(_ columns: PostgresRandomAccessRow, _ name: String) throws -> StoredContext.Kind {
        guard let kind = StoredContext.Kind(rawValue: try columns["kind"].decode(String.self)) else {
            throw StoreError(.corrupt, "context \(name) has an unknown kind")
        }
        return kind
    }

    private func decodeSession(_ columns: PostgresRandomAccessRow, _ name: String) throws -> SessionInfo? {
        guard let sessionId = try columns["session_id"].decode(Int64?.self) else { return nil }
        return SessionInfo(id: Int(sessionId), token: try sealer.openToken(try columns["token"].decode(Data.self), name),
                           userId: Int(try columns["user_id"].decode(Int64.self)),
                           created: Date(timeIntervalSince1970: try columns["created"].decode(Double.self)),
                           expiresAt: Date(timeIntervalSince1970: try columns["expires_at"].decode(Double.self)))
    }

    private func decodeContext(_ row: PostgresRow) throws -> StoredContext {
        let columns = row.makeRandomAccess()
        let name = try columns["name"].decode(String.self)
        return StoredContext(name: name, kind: try kind(columns, name),
                             registration: try sealer.openRegistration(try columns["registration"].decode(Data.self), name),
                             session: try decodeSession(columns, name),
                             generation: Int(try columns["generation"].decode(Int64.self)))
    }

    // MARK: OAuth states

    public func saveOAuthState(_ state: String, redirectURI: String, expiresAt: Date) throws {
        let digest = StateSealer.stateDigest(state)
        try transaction("save an OAuth state") { connection in
            _ = try run(connection, "DELETE FROM oauth_state WHERE expires_at <= \(Date().timeIntervalSince1970)")
            _ = try run(connection, """
                INSERT INTO oauth_state (digest, redirect_uri, expires_at) VALUES (\(digest), \(redirectURI), \(expiresAt.timeIntervalSince1970))
                ON CONFLICT (digest) DO UPDATE SET redirect_uri = excluded.redirect_uri, expires_at = excluded.expires_at
                """)
        }
    }

    public func takeOAuthState(_ state: String, now: Date) throws -> String? {
        let digest = StateSealer.stateDigest(state)
        return try call("take an OAuth state") { connection in
            let rows = try run(connection, "DELETE FROM oauth_state WHERE digest = \(digest) RETURNING redirect_uri, expires_at").rows
            guard let row = rows.first else { return nil }
            let (redirect, expiresAt) = try row.decode((String, Double).self)
            return expiresAt > now.timeIntervalSince1970 ? redirect : nil
        }
    }

    // MARK: Writes (each a transaction, committed before it returns)

    public func saveRegistration(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration) throws {
        let sealed = try sealer.sealRegistration(registration, name)
        let now = Date().timeIntervalSince1970
        try transaction("save the registration of \(name)") { connection in
            _ = try run(connection, """
                INSERT INTO context (name, kind, registration, server_public_key, created_at, updated_at)
                VALUES (\(name), \(kind.rawValue), \(sealed), \(registration.serverPublicKeyPEM), \(now), \(now))
                ON CONFLICT (name) DO UPDATE SET registration = excluded.registration,
                    server_public_key = excluded.server_public_key, updated_at = excluded.updated_at
                """)
        }
    }

    public func updateRegistration(_ name: String, _ registration: IdentityRegistration) throws {
        let sealed = try sealer.sealRegistration(registration, name)
        try transaction("save the registration of \(name)") { connection in
            let result = try run(connection, """
                UPDATE context SET registration = \(sealed), server_public_key = \(registration.serverPublicKeyPEM),
                    updated_at = \(Date().timeIntervalSince1970) WHERE name = \(name)
                """)
            guard result.metadata.rows == 1 else { throw StoreError(.missing, "context \(name) does not exist") }
        }
    }

    public func saveSession(_ name: String, _ session: SessionInfo, generation: Int, registration: IdentityRegistration) throws {
        let token = try sealer.sealToken(session, name)
        let sealed = try sealer.sealRegistration(registration, name)
        try transaction("save the session of \(name)") { connection in
            let result = try run(connection, """
                UPDATE context SET registration = \(sealed), server_public_key = \(registration.serverPublicKeyPEM),
                    generation = \(generation), updated_at = \(Date().timeIntervalSince1970) WHERE name = \(name)
                """)
            guard result.metadata.rows == 1 else { throw StoreError(.missing, "context \(name) does not exist") }
            _ = try run(connection, try upsertSession(name, session, token))
        }
    }

    func upsertSession(_ name: String, _ session: SessionInfo, _ token: Data) throws -> PostgresQuery {
        try """
        INSERT INTO session (context, session_id, token, user_id, created, expires_at)
        VALUES (\(name), \(session.id), \(token), \(session.userId), \(session.created.timeIntervalSince1970),
                \(session.expiresAt.timeIntervalSince1970))
        ON CONFLICT (context) DO UPDATE SET session_id = excluded.session_id, token = excluded.token,
            user_id = excluded.user_id, created = excluded.created, expires_at = excluded.expires_at
        """
    }

    public func importContexts(_ contexts: [StoredContext]) throws {
        let sealed = try contexts.map { context in
            (context, try sealer.sealRegistration(context.registration, context.name),
             try context.session.map { try sealer.sealToken($0, context.name) })
        }
        let now = Date().timeIntervalSince1970
        try transaction("import \(contexts.count) contexts") { connection in
            for (context, registration, token) in sealed {
                _ = try run(connection, """
                    INSERT INTO context (name, kind, registration, server_public_key, generation, created_at, updated_at)
                    VALUES (\(context.name), \(context.kind.rawValue), \(registration), \(context.registration.serverPublicKeyPEM),
                            \(context.generation), \(now), \(now))
                    ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, registration = excluded.registration,
                        server_public_key = excluded.server_public_key, generation = excluded.generation,
                        updated_at = excluded.updated_at
                    """)
                if let session = context.session, let token {
                    _ = try run(connection, try upsertSession(context.name, session, token))
                } else {
                    _ = try run(connection, "DELETE FROM session WHERE context = \(context.name)")
                }
            }
        }
    }

    /// Deletes the context's rows. PostgreSQL keeps dead row versions until VACUUM reclaims them; the secrets in
    /// them are sealed, and useless without the master key.
    public func removeContext(_ name: String) throws {
        try transaction("remove \(name)") { connection in
            _ = try run(connection, "DELETE FROM session WHERE context = \(name)")
            _ = try run(connection, "DELETE FROM context WHERE name = \(name)")
        }
    }

    // MARK: The connection

    func run(_ connection: PostgresConnection, _ query: PostgresQuery) throws -> PostgresQueryResult {
        try connection.query(query, logger: logger).wait()
    }

    /// `body` inside BEGIN … COMMIT (ROLLBACK when it throws).
    func transaction<T>(_ what: String, _ body: (PostgresConnection) throws -> T) throws -> T {
        try call(what) { connection in
            _ = try run(connection, "BEGIN")
            do {
                let value = try body(connection)
                _ = try run(connection, "COMMIT")
                return value
            } catch {
                _ = try? run(connection, "ROLLBACK")
                throw error
            }
        }
    }

    /// Runs `body` on the connection (made, or made again, when needed), one call at a time.
    func call<T>(_ what: String, _ body: (PostgresConnection) throws -> T) throws -> T {
        try connection.withLock { current in
            do {
                if current == nil || current!.isClosed {
                    current = try connect()
                }
                return try body(current!)
            } catch let error as StoreError {
                throw error
            } catch {
                if current?.isClosed == true { current = nil }
                throw StoreError(.database, "cannot \(what) in \(settings.location)", cause: PostgresFailure(description: Self.describe(error)))
            }
        }
    }

    func connect() throws -> PostgresConnection {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        return try PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.next(), configuration: try configuration(),
                                              id: id, logger: logger).wait()
    }

    /// A new connection, made asynchronously (the notification listener's own).
    func connectAsync() async throws -> PostgresConnection {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        return try await PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.next(),
                                                    configuration: try configuration(), id: id, logger: logger)
    }

    private func configuration() throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        switch settings.tls {
        case .disable:
            tls = .disable
        case .require:
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateVerification = .none
            tls = .require(try NIOSSLContext(configuration: configuration))
        case .verifyFull:
            tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
        }
        var configuration = PostgresConnection.Configuration(host: settings.host, port: settings.port,
                                                             username: settings.username, password: settings.password,
                                                             database: settings.database, tls: tls)
        configuration.options.connectTimeout = Self.connectTimeout
        return configuration
    }

    /// A PostgreSQL error as its server message and code (PSQLError's description hides them by design), never
    /// the query's bound values.
    static func describe(_ error: any Error) -> String {
        guard let error = error as? PSQLError else { return "\(error)" }
        if let message = error.serverInfo?[.message] {
            return "\(message) (SQLSTATE \(error.serverInfo?[.sqlState] ?? "?"))"
        }
        return "\(error.code)"
    }
}

/// A PostgreSQL failure as the store reports it: the server's message and SQLSTATE.
struct PostgresFailure: Error, CustomStringConvertible {
    let description: String
}
