import BunqAPI
import BunqCrypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import ServiceLifecycle
import SessionKeeper
import Synchronization

/// The state in PostgreSQL, for several daemons on one store: the same rows as the SQLite store, every secret
/// sealed the same way under the same master key (which every daemon must be given), schema migrations applied
/// once under an advisory lock however many daemons start together, and a key check that refuses a daemon whose
/// key did not seal the store.
///
/// Calls go through postgres-nio's `PostgresClient`, a pool run as a `Service` (`run`) in the daemon's service
/// group; nothing waits synchronously and nothing holds a lock across a query. Each call has the store's
/// deadline (`state.timeout`): a server that stops answering (paused, a black-holed network) costs the call that
/// long, after which its connection is closed, so the query ends and the pool makes a new one. The server ends a
/// statement that runs past the deadline itself too (`statement_timeout`), and a transaction left idle by a
/// vanished client (`idle_in_transaction_session_timeout`).
public final class PostgresState: ClusterStore, Service {
    public let settings: PostgresSettings
    public var location: String { settings.location }
    public let calls: StoreCalls
    let sealer: StateSealer
    let keySource: String
    let logger: Logger
    let client: PostgresClient
    private let nextID = Atomic<Int>(1)
    /// How long a connection may take to be made (the listener's own; the pool's is the same).
    let connectTimeout: Duration

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

    /// Builds the client; connects nothing until `run` runs the pool and `prepare` migrates and checks
    /// `masterKey` (read from `keySource`) against the store's key check.
    public init(settings: PostgresSettings, masterKey: SymmetricKey, keySource: String, timeout: Duration = .seconds(2),
                logger: Logger) throws {
        self.settings = settings
        sealer = StateSealer(key: masterKey)
        self.keySource = keySource
        self.logger = logger
        calls = StoreCalls(location: settings.location, timeout: timeout, logger: logger)
        connectTimeout = max(timeout, .seconds(1))
        var configuration = PostgresClient.Configuration(host: settings.host, port: settings.port, username: settings.username,
                                                         password: settings.password, database: settings.database,
                                                         tls: try Self.tls(settings.tls))
        configuration.options.connectTimeout = connectTimeout
        configuration.options.maximumConnections = 8
        let milliseconds = max(1, Int(timeout / .milliseconds(1)))
        configuration.options.additionalStartupParameters = [
            ("statement_timeout", "\(milliseconds)"),
            ("idle_in_transaction_session_timeout", "\(max(10_000, milliseconds * 10))"),
        ]
        var poolLogger = logger
        poolLogger.logLevel = max(logger.logLevel, .notice)
        client = PostgresClient(configuration: configuration, backgroundLogger: poolLogger)
    }

    /// Runs the connection pool until the task is cancelled (the daemon's service group runs it first and stops
    /// it last, after the keeper has left the cluster).
    public func run() async throws {
        // Ends at the group's graceful shutdown (PostgresClient cancels itself then), which reaches it last.
        await client.run()
    }

    /// Runs `body` with the pool running and the store prepared (tools and tests outside a service group).
    public func withRunning<T>(_ body: () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { [client] in await client.run() }
            defer { group.cancelAll() }
            try await prepare()
            return try await body()
        }
    }

    /// At start, with a deadline of its own (120 s: daemons starting together wait for the first one's
    /// migration, and a host busy starting many things can take tens of seconds; 30 s failed under the full
    /// test suite's load).
    public func prepare() async throws {
        let sealer = sealer, settings = settings, keySource = keySource
        try await transaction("migrate", "migrate", timeout: .seconds(120)) { connection in
            // Daemons starting together wait here for the first one's migration.
            _ = try await self.run(connection, "SET LOCAL statement_timeout = 0")
            _ = try await self.run(connection, "SELECT pg_advisory_xact_lock(\(Self.migrationLock))")
            _ = try await self.run(connection, "CREATE TABLE IF NOT EXISTS bunq_migrations (name text PRIMARY KEY, applied_at double precision NOT NULL)")
            let applied = Set(try await self.run(connection, "SELECT name FROM bunq_migrations").rows.map { try $0.decode(String.self) })
            for migration in Self.migrations where !applied.contains(migration.name) {
                for statement in migration.statements { _ = try await self.run(connection, PostgresQuery(unsafeSQL: statement)) }
                _ = try await self.run(connection, "INSERT INTO bunq_migrations (name, applied_at) VALUES (\(migration.name), \(Date().timeIntervalSince1970))")
            }
            // The first daemon seals the check; every later one must open it.
            let sealed = try sealer.seal(StateSealer.keyCheckPlaintext, "meta", "key_check")
            _ = try await self.run(connection, "INSERT INTO meta (key, value) VALUES ('key_check', \(sealed)) ON CONFLICT (key) DO NOTHING")
            let check = try await self.run(connection, "SELECT value FROM meta WHERE key = 'key_check'").rows.first.map { try $0.decode(Data.self) }
            guard let check, (try? sealer.open(check, "meta", "key_check")) != nil else {
                throw StateSealer.wrongKey(keySource, settings.location)
            }
        }
    }

    public func appliedMigrations() async throws -> [String] {
        try await call("read_migrations", "read the migrations") { connection in
            try await self.run(connection, "SELECT name FROM bunq_migrations ORDER BY name").rows.map { try $0.decode(String.self) }
        }
    }

    // MARK: Reads

    static let contextColumns = """
        SELECT c.name, c.kind, c.registration, c.generation, s.session_id, s.token, s.user_id, s.created, s.expires_at
        FROM context c LEFT JOIN session s ON s.context = c.name
        """

    public func contexts() async throws -> [StoredContext] {
        try await call("read_contexts", "read the contexts") { connection in
            try await self.run(connection, PostgresQuery(unsafeSQL: Self.contextColumns + " ORDER BY c.name")).rows.map(self.decodeContext)
        }
    }

    public func context(_ name: String) async throws -> StoredContext? {
        try await call("read_context", "read context \(name)") { connection in
            try await self.run(connection, "\(unescaped: Self.contextColumns) WHERE c.name = \(name)").rows.first.map(self.decodeContext)
        }
    }

    public func records() async throws -> [ContextRecord] {
        try await call("read_records", "read the context records") { connection in
            var interned: [String: String] = [:]
            return try await self.run(connection, """
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
                return ContextRecord(name: name, kind: try self.kind(columns, name), session: try self.decodeSession(columns, name),
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
        return StoredContext(name: name, kind: try self.kind(columns, name),
                             registration: try sealer.openRegistration(try columns["registration"].decode(Data.self), name),
                             session: try self.decodeSession(columns, name),
                             generation: Int(try columns["generation"].decode(Int64.self)))
    }

    // MARK: OAuth states

    public func saveOAuthState(_ state: String, redirectURI: String, expiresAt: Date) async throws {
        let digest = StateSealer.stateDigest(state)
        try await transaction("save_oauth_state", "save an OAuth state") { connection in
            _ = try await self.run(connection, "DELETE FROM oauth_state WHERE expires_at <= \(Date().timeIntervalSince1970)")
            _ = try await self.run(connection, """
                INSERT INTO oauth_state (digest, redirect_uri, expires_at) VALUES (\(digest), \(redirectURI), \(expiresAt.timeIntervalSince1970))
                ON CONFLICT (digest) DO UPDATE SET redirect_uri = excluded.redirect_uri, expires_at = excluded.expires_at
                """)
        }
    }

    public func takeOAuthState(_ state: String, now: Date) async throws -> String? {
        let digest = StateSealer.stateDigest(state)
        return try await call("take_oauth_state", "take an OAuth state") { connection in
            let rows = try await self.run(connection, "DELETE FROM oauth_state WHERE digest = \(digest) RETURNING redirect_uri, expires_at").rows
            guard let row = rows.first else { return nil }
            let (redirect, expiresAt) = try row.decode((String, Double).self)
            return expiresAt > now.timeIntervalSince1970 ? redirect : nil
        }
    }

    // MARK: Writes (each a transaction, committed before it returns)

    public func saveRegistration(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration) async throws {
        let sealed = try sealer.sealRegistration(registration, name)
        let now = Date().timeIntervalSince1970
        try await transaction("save_registration", "save the registration of \(name)") { connection in
            _ = try await self.run(connection, """
                INSERT INTO context (name, kind, registration, server_public_key, created_at, updated_at)
                VALUES (\(name), \(kind.rawValue), \(sealed), \(registration.serverPublicKeyPEM), \(now), \(now))
                ON CONFLICT (name) DO UPDATE SET registration = excluded.registration,
                    server_public_key = excluded.server_public_key, updated_at = excluded.updated_at
                """)
        }
    }

    public func updateRegistration(_ name: String, _ registration: IdentityRegistration) async throws {
        let sealed = try sealer.sealRegistration(registration, name)
        try await transaction("save_registration", "save the registration of \(name)") { connection in
            let result = try await self.run(connection, """
                UPDATE context SET registration = \(sealed), server_public_key = \(registration.serverPublicKeyPEM),
                    updated_at = \(Date().timeIntervalSince1970) WHERE name = \(name)
                """)
            guard result.metadata.rows == 1 else { throw StoreError(.missing, "context \(name) does not exist") }
        }
    }

    public func saveSession(_ name: String, _ session: SessionInfo, generation: Int, registration: IdentityRegistration) async throws {
        let token = try sealer.sealToken(session, name)
        let sealed = try sealer.sealRegistration(registration, name)
        try await transaction("save_session", "save the session of \(name)") { connection in
            let result = try await self.run(connection, """
                UPDATE context SET registration = \(sealed), server_public_key = \(registration.serverPublicKeyPEM),
                    generation = \(generation), updated_at = \(Date().timeIntervalSince1970) WHERE name = \(name)
                """)
            guard result.metadata.rows == 1 else { throw StoreError(.missing, "context \(name) does not exist") }
            _ = try await self.run(connection, try self.upsertSession(name, session, token))
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

    public func importContexts(_ contexts: [StoredContext]) async throws {
        let sealed = try contexts.map { context in
            (context, try sealer.sealRegistration(context.registration, context.name),
             try context.session.map { try sealer.sealToken($0, context.name) })
        }
        let now = Date().timeIntervalSince1970
        try await transaction("import_contexts", "import \(contexts.count) contexts", timeout: .seconds(600)) { connection in
            _ = try await self.run(connection, "SET LOCAL statement_timeout = 0")
            for (context, registration, token) in sealed {
                _ = try await self.run(connection, """
                    INSERT INTO context (name, kind, registration, server_public_key, generation, created_at, updated_at)
                    VALUES (\(context.name), \(context.kind.rawValue), \(registration), \(context.registration.serverPublicKeyPEM),
                            \(context.generation), \(now), \(now))
                    ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, registration = excluded.registration,
                        server_public_key = excluded.server_public_key, generation = excluded.generation,
                        updated_at = excluded.updated_at
                    """)
                if let session = context.session, let token {
                    _ = try await self.run(connection, try self.upsertSession(context.name, session, token))
                } else {
                    _ = try await self.run(connection, "DELETE FROM session WHERE context = \(context.name)")
                }
            }
        }
    }

    /// Deletes the context's rows. PostgreSQL keeps dead row versions until VACUUM reclaims them; the secrets in
    /// them are sealed, and useless without the master key.
    public func removeContext(_ name: String) async throws {
        try await transaction("remove_context", "remove \(name)") { connection in
            _ = try await self.run(connection, "DELETE FROM session WHERE context = \(name)")
            _ = try await self.run(connection, "DELETE FROM context WHERE name = \(name)")
        }
    }

    // MARK: The connection

    /// One statement's result. A statement written to a connection that has closed is never answered (the
    /// channel drops the write, and with it the statement's promise), so it is written on the connection's own
    /// event loop, where closing happens too, and only while the connection is open: a connection closing under
    /// it answers it with an error instead.
    func run(_ connection: PostgresConnection, _ query: PostgresQuery) async throws -> PostgresQueryResult {
        let logger = logger
        return try await connection.eventLoop.flatSubmit {
            connection.isClosed ? connection.eventLoop.makeFailedFuture(StaleConnection())
                : connection.query(query, logger: logger)
        }.get()
    }

    /// `body` inside BEGIN … COMMIT (ROLLBACK when it throws), on one pooled connection, within the deadline.
    func transaction<T: Sendable>(_ operation: String, _ what: String, timeout: Duration? = nil,
                                  _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await call(operation, what, timeout: timeout) { connection in
            _ = try await self.run(connection, "BEGIN")
            do {
                let value = try await body(connection)
                _ = try await self.run(connection, "COMMIT")
                return value
            } catch {
                _ = try? await self.run(connection, "ROLLBACK")
                throw error
            }
        }
    }

    /// Runs `body` on a connection borrowed from the pool, within the deadline. Past it the connection is closed:
    /// the query in flight fails at once (postgres-nio cannot cancel a query otherwise), it goes back, and
    /// the pool replaces the connection. A transaction cut off that way is rolled back by the server.
    func call<T: Sendable>(_ operation: String, _ what: String, timeout: Duration? = nil,
                           _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let borrowed = Mutex<PostgresConnection?>(nil)
        let location = settings.location
        return try await calls.run(operation, timeout: timeout, { [client] in
            do {
                // A connection closed at an earlier deadline can be handed out once more before the pool hears
                // of its closing: it is passed over for another.
                for _ in 0..<4 {
                    do {
                        return try await client.withConnection { connection in
                            guard !connection.isClosed else { throw StaleConnection() }
                            borrowed.withLock { $0 = connection }
                            defer { borrowed.withLock { $0 = nil } }
                            return try await body(connection)
                        }
                    } catch is StaleConnection {
                        // Closed under it by an earlier call's deadline (only a call's own deadline closes a
                        // connection, and then that call has returned already).
                        try await Task.sleep(for: .milliseconds(10))
                    } catch let error as PSQLError where error.code == .clientClosedConnection {
                        // Closed by an earlier call's deadline while it was being handed out: only a call's own
                        // deadline closes a connection, and then this call has returned already, so nothing of
                        // this call reached the server on it.
                        try await Task.sleep(for: .milliseconds(10))
                    }
                }
                throw StaleConnection()
            } catch let error as StoreError {
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                throw StoreError(.database, "cannot \(what) in \(location)", cause: PostgresFailure(description: Self.describe(error)))
            }
        }, onTimeout: {
            if let connection = borrowed.withLock({ $0 }) { let _: EventLoopFuture<Void> = connection.close() }
        })
    }

    /// A new connection of its own, made asynchronously (the notification listener's).
    func connectAsync() async throws -> PostgresConnection {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        var configuration = PostgresConnection.Configuration(host: settings.host, port: settings.port,
                                                             username: settings.username, password: settings.password,
                                                             database: settings.database, tls: try Self.connectionTLS(settings.tls))
        configuration.options.connectTimeout = .milliseconds(Int64(connectTimeout / .milliseconds(1)))
        return try await PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.next(),
                                                    configuration: configuration, id: id, logger: logger)
    }

    private static func tlsConfiguration(_ mode: PostgresSettings.TLSMode) -> TLSConfiguration? {
        switch mode {
        case .disable:
            return nil
        case .require:
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateVerification = .none
            return configuration
        case .verifyFull:
            return .makeClientConfiguration()
        }
    }

    static func tls(_ mode: PostgresSettings.TLSMode) throws -> PostgresClient.Configuration.TLS {
        tlsConfiguration(mode).map { .require($0) } ?? .disable
    }

    static func connectionTLS(_ mode: PostgresSettings.TLSMode) throws -> PostgresConnection.Configuration.TLS {
        try tlsConfiguration(mode).map { .require(try NIOSSLContext(configuration: $0)) } ?? .disable
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

/// A pooled connection that was closed when it was handed out, or closed under a statement.
struct StaleConnection: Error, CustomStringConvertible {
    var description: String { "the connection to the store was closed" }
}

/// A PostgreSQL failure as the store reports it: the server's message and SQLSTATE.
struct PostgresFailure: Error, CustomStringConvertible {
    let description: String
}
