import BunqAPI
import BunqCrypto
import Foundation
import Logging
import PostgresState
import SessionKeeper
import Synchronization
import TestThreads
import Testing
import TestSupport

/// One engine under test: the embedded SQLite store, or a PostgreSQL server of the test's own.
final class Engine: Sendable {
    enum Kind: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case sqlite, postgresql
        var testDescription: String { rawValue }
    }

    let kind: Kind
    let directory: TemporaryDirectory
    let server: PostgresServer?

    /// Nil (with the reason reported) when the engine cannot run here.
    static func start(_ kind: Kind) throws -> Engine? {
        if kind == .postgresql, let reason = PostgresServer.unavailable {
            #expect(!Skip.report("state backend conformance on PostgreSQL: \(reason)"))
            return nil
        }
        return try Engine(kind)
    }

    private init(_ kind: Kind) throws {
        self.kind = kind
        directory = try TemporaryDirectory()
        server = kind == .postgresql ? try PostgresServer() : nil
    }

    func open(_ key: SymmetricKey, keySource: String = "the test's key", timeout: Duration = .seconds(5)) throws -> any StateBackend {
        switch kind {
        case .sqlite:
            return try StateStore(directory: directory.path("state"), masterKey: key, keySource: keySource, timeout: timeout)
        case .postgresql:
            let settings = try PostgresSettings.parse(url: server!.url, password: server!.password)
            return try PostgresState(settings: settings, masterKey: key, keySource: keySource, timeout: timeout,
                                     logger: Logger(label: "test"))
        }
    }

    /// Opens the store and runs `body` with it ready: a PostgreSQL store's pool running, migrated, key checked.
    func with<T>(_ key: SymmetricKey, keySource: String = "the test's key", timeout: Duration = .seconds(5),
                 _ body: (any StateBackend) async throws -> T) async throws -> T {
        let store = try open(key, keySource: keySource, timeout: timeout)
        if let postgres = store as? PostgresState { return try await postgres.withRunning { try await body(postgres) } }
        try await store.prepare()
        return try await body(store)
    }

    /// Everything the engine holds, as bytes: the database files, or a dump of the database.
    func everything() throws -> String {
        switch kind {
        case .sqlite:
            let files = try FileManager.default.contentsOfDirectory(atPath: directory.path("state"))
            return try files.map { String(decoding: try Data(contentsOf: URL(fileURLWithPath: directory.path("state/\($0)"))), as: UTF8.self) }
                .joined()
        case .postgresql:
            return try server!.psql("SELECT string_agg(encode(registration, 'escape'), '') FROM context", database: server!.database)
                + server!.psql("SELECT string_agg(encode(token, 'escape'), '') FROM session", database: server!.database)
        }
    }

    func stop() {
        server?.stop()
        directory.remove()
    }
}

/// The store interface's contract, run against both engines: what one backend does, the other does.
@Suite(.ownThread) struct StateBackendConformanceTests {
    let apiKey = "sandbox_SECRETAPIKEY0123456789abcdef"
    let token = "SESSIONTOKEN0123456789abcdef0123456789abcdef0123456789abcdef0123"

    func registration() async throws -> IdentityRegistration {
        var registration = IdentityRegistration(kind: .apiKey, secret: apiKey)
        registration.installationKeyPEM = try await RSAPrivateKey.generate().pkcs8PEM()
        registration.installationToken = "INSTALLATIONTOKEN0123456789"
        registration.serverPublicKeyPEM = "-----BEGIN PUBLIC KEY-----\nserver\n-----END PUBLIC KEY-----\n"
        registration.deviceBound = true
        return registration
    }

    var session: SessionInfo {
        SessionInfo(id: 7, token: token, userId: 1822179, created: Date(timeIntervalSince1970: 1_700_000_000),
                    expiresAt: Date(timeIntervalSince1970: 1_700_604_800))
    }

    @Test(arguments: Engine.Kind.allCases)
    func contextsAndSessionsSurviveAReopenSealed(_ kind: Engine.Kind) async throws {
        guard let engine = try Engine.start(kind) else { return }
        defer { engine.stop() }
        let key = try SymmetricKey.generate()
        let registration = try await registration()
        let migrations: [String]
        let session = session
        migrations = try await engine.with(key) { store in
            try await store.saveRegistration("ops", kind: .apiKey, registration)
            try await store.saveSession("ops", session, generation: 3, registration: registration)
            try await store.saveRegistration("provider", kind: .provider, IdentityRegistration(kind: .psd2Provider))
            return try await store.appliedMigrations()
        }
        #expect(!migrations.isEmpty)
        try await engine.with(key) { reopened in
        #expect(try await reopened.appliedMigrations() == migrations, "a reopen applies nothing again")
        let contexts = try await reopened.contexts()
        #expect(contexts.map(\.name) == ["ops", "provider"])
        #expect(contexts.first == StoredContext(name: "ops", kind: .apiKey, registration: registration, session: session, generation: 3))
        #expect(contexts.last?.session == nil && contexts.last?.registration.kind == .psd2Provider)
        #expect(try await reopened.records() == [
            ContextRecord(name: "ops", kind: .apiKey, session: session, generation: 3, serverPublicKeyPEM: registration.serverPublicKeyPEM),
            ContextRecord(name: "provider", kind: .provider, session: nil, generation: 0, serverPublicKeyPEM: nil),
        ])
        #expect(try await reopened.context("provider")?.kind == .provider)
        #expect(try await reopened.context("ghost") == nil)
        // Sealed at rest: neither the API key, the installation key nor the token is in what the engine holds.
        let held = try engine.everything()
        #expect(!held.isEmpty && !held.contains(apiKey) && !held.contains(token) && !held.contains("PRIVATE KEY"))
        try await reopened.removeContext("ops")
        #expect(try await reopened.contexts().map(\.name) == ["provider"])
        }
    }

    @Test(arguments: Engine.Kind.allCases)
    func writesForAContextThatIsGoneAreRefusedNeverUpserted(_ kind: Engine.Kind) async throws {
        guard let engine = try Engine.start(kind) else { return }
        defer { engine.stop() }
        let registration = try await registration()
        let session = session
        try await engine.with(try SymmetricKey.generate()) { store in
        try await store.saveRegistration("ops", kind: .apiKey, registration)
        try await store.removeContext("ops")
        await #expect { try await store.updateRegistration("ops", registration) } throws: { ($0 as? StoreError)?.code == .missing }
        await #expect { try await store.saveSession("ops", session, generation: 2, registration: registration) }
            throws: { ($0 as? StoreError)?.code == .missing }
        #expect(try await store.contexts().isEmpty, "no write brought the removed context back")
        // Import replaces by name, sessions included.
        try await store.importContexts([StoredContext(name: "a", kind: .apiKey, registration: registration, session: session, generation: 5),
                                  StoredContext(name: "b", kind: .oauthUser, registration: registration)])
        try await store.importContexts([StoredContext(name: "a", kind: .apiKey, registration: registration, session: nil, generation: 6)])
        let imported = try await store.contexts()
        #expect(imported.map(\.name) == ["a", "b"] && imported[0].generation == 6 && imported[0].session == nil)
        }
    }

    @Test(arguments: Engine.Kind.allCases)
    func aStateOpensOnlyWithTheKeyThatSealedIt(_ kind: Engine.Kind) async throws {
        guard let engine = try Engine.start(kind) else { return }
        defer { engine.stop() }
        let key = try SymmetricKey.generate()
        let registration = try await registration()
        try await engine.with(key) { try await $0.saveRegistration("ops", kind: .apiKey, registration) }
        await #expect {
            try await engine.with(try SymmetricKey.generate(), keySource: "/etc/other.key") { _ in }
        } throws: { error in
            let error = error as? StoreError
            return error?.code == .masterKey && error?.message.contains("/etc/other.key") == true
        }
        #expect(try await engine.with(key) { try await $0.context("ops") } != nil)
    }
}

extension StateBackendConformanceTests {
    @Test(arguments: Engine.Kind.allCases)
    func anOAuthStateIsSingleUseExpiresAndIsSharedByEveryOpener(_ kind: Engine.Kind) async throws {
        guard let engine = try Engine.start(kind) else { return }
        defer { engine.stop() }
        let key = try SymmetricKey.generate()
        let now = Date()
        try await engine.with(key) { issuer in
        try await issuer.saveOAuthState("STATE-live-0123456789", redirectURI: "https://example.com/cb", expiresAt: now.addingTimeInterval(600))
        try await issuer.saveOAuthState("STATE-old-0123456789", redirectURI: "https://example.com/cb", expiresAt: now.addingTimeInterval(1))
        // Another opener of the store (another daemon, or this one after a restart) completes it, once.
        try await engine.with(key) { completer in
        #expect(try await completer.takeOAuthState("STATE-live-0123456789", now: now) == "https://example.com/cb")
        #expect(try await issuer.takeOAuthState("STATE-live-0123456789", now: now) == nil, "single use")
        #expect(try await completer.takeOAuthState("STATE-old-0123456789", now: now.addingTimeInterval(2)) == nil, "expired")
        #expect(try await completer.takeOAuthState("never-issued", now: now) == nil)
        // Kept as a digest only.
        try await issuer.saveOAuthState("STATE-secret-abcdef", redirectURI: "https://example.com/cb", expiresAt: now.addingTimeInterval(600))
        if kind == .postgresql, let server = engine.server {
            #expect(!(try server.psql("SELECT digest FROM oauth_state", database: server.database)).contains("STATE-secret"))
        } else {
            #expect(!(try engine.everything()).contains("STATE-secret"))
        }
        }
        }
    }
}

/// What only the shared engine must do: many daemons opening it at once, and a server that goes away and returns.
@Suite(.ownThread) struct PostgresStateTests {
    @Test func daemonsStartingTogetherMigrateOnceAndShareTheKey() async throws {
        guard let engine = try Engine.start(.postgresql) else { return }
        defer { engine.stop() }
        let key = try SymmetricKey.generate()
        let opened = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<4 {
                group.addTask { (try? await engine.with(key) { _ in true }) == true }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(opened == 4)
        let server = try #require(engine.server)
        #expect(try server.psql("SELECT count(*) FROM bunq_migrations", database: server.database)
            .trimmingCharacters(in: .whitespacesAndNewlines) == "\(PostgresState.migrations.count)")
        #expect(try server.psql("SELECT count(*) FROM meta", database: server.database).trimmingCharacters(in: .whitespacesAndNewlines) == "1")
    }

    /// Leases and fencing as the store enforces them: one holder at a time, a new fence at each takeover, a
    /// late write under the old fence refused (and no generation ever goes back), the shared session-server slot
    /// granted to one daemon of a group at a time, and changes notified to the others.
    @Test func leasesAreFencedAndTheSessionServerSlotIsShared() async throws {
        guard let engine = try Engine.start(.postgresql) else { return }
        defer { engine.stop() }
        let key = try SymmetricKey.generate()
        try await engine.with(key) { a in
        try await engine.with(key) { b in
        let a = try #require(a as? PostgresState), b = try #require(b as? PostgresState)
        let registration = IdentityRegistration(kind: .apiKey, secret: "sandbox_SECRETAPIKEY0123456789abcdef")
        let first = try #require(try await a.insertRegistration("ops", kind: .apiKey, registration, by: "a", leaseSeconds: 600))
        #expect(first.fence == 1)
        #expect(try await b.insertRegistration("ops", kind: .apiKey, registration, by: "b", leaseSeconds: 600) == nil,
                "created once, however many daemons try")
        #expect(try await b.acquireLeases(instance: "b", seconds: 600, limit: 10).isEmpty, "held by a")
        let session = SessionInfo(id: 1, token: "SESSIONTOKEN-one", userId: 5, created: Date(), expiresAt: Date() + 600)
        try await a.saveSession("ops", session, generation: 1, registration: registration, fence: first.fence, by: "a")

        // a stops renewing (paused): its lease runs out and b takes it, under a higher fence.
        #expect(try await a.renewLeases(instance: "a", seconds: 0.2) == [first])
        try await Task.sleep(for: .milliseconds(500))
        #expect(try await a.renewLeases(instance: "a", seconds: 5).isEmpty, "an expired lease is not extended")
        let taken = try await b.acquireLeases(instance: "b", seconds: 600, limit: 10)
        #expect(taken == [LeaseGrant(context: "ops", fence: 2)])
        let late = SessionInfo(id: 2, token: "SESSIONTOKEN-late", userId: 5, created: Date(), expiresAt: Date() + 600)
        await #expect { try await a.saveSession("ops", late, generation: 2, registration: registration, fence: first.fence, by: "a") }
            throws: { ($0 as? StoreError)?.code == .fenced }
        await #expect { try await a.updateRegistration("ops", registration, fence: first.fence, by: "a") }
            throws: { ($0 as? StoreError)?.code == .fenced }
        try await b.saveSession("ops", session, generation: 2, registration: registration, fence: 2, by: "b")
        await #expect { try await b.saveSession("ops", session, generation: 2, registration: registration, fence: 2, by: "b") }
            throws: { ($0 as? StoreError)?.code == .fenced }
        #expect(try await a.context("ops")?.generation == 2)
        #expect(try await a.context("ops")?.session?.token == session.token)

        // Membership and the fair share's inputs.
        _ = try await a.heartbeat(instance: "a", process: "a-1", egressGroup: "g1", window: 600)
        let (members, contexts) = try await b.heartbeat(instance: "b", process: "b-1", egressGroup: "g1", window: 600)
        await #expect { _ = try await b.heartbeat(instance: "a", process: "a-2", egressGroup: "g1", window: 600) }
            throws: { ($0 as? StoreError)?.code == .locked && "\($0)".contains("cluster.instance a") }
        #expect(members.map(\.instance) == ["a", "b"] && members.map(\.leases) == [0, 1] && contexts == 1)
        try await b.releaseLeases(instance: "b", ["ops"])
        #expect(try await a.acquireLeases(instance: "a", seconds: 600, limit: 1) == [LeaseGrant(context: "ops", fence: 3)])

        // One session-server call per group at a time, spaced from the end of the last.
        #expect(try await a.claimSessionServer(egressGroup: "g1", instance: "a", hold: 30) == nil)
        let wait = try #require(try await b.claimSessionServer(egressGroup: "g1", instance: "b", hold: 30))
        #expect(wait > 25, "held while a calls")
        #expect(try await b.claimSessionServer(egressGroup: "g2", instance: "b", hold: 30) == nil, "another group, another IP")
        let released = ContinuousClock.now
        try await a.releaseSessionServer(egressGroup: "g1", instance: "a", spacing: 2)
        let spaced = try await b.claimSessionServer(egressGroup: "g1", instance: "b", hold: 30)
        #expect(spaced.map { $0 > 0 && $0 <= 2 } ?? (ContinuousClock.now - released >= .seconds(2)), "opens one spacing after the call")
        try await Task.sleep(for: .milliseconds(2_100))
        #expect(try await b.claimSessionServer(egressGroup: "g1", instance: "b", hold: 30) == nil)

        // A change committed by one daemon reaches the other's listener.
        let heard = Heard()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await b.listen { change in heard.changes.withLock { $0.append(change) } } }
            for _ in 0..<100 where !heard.changes.withLock({ $0.contains(.resync) }) { try await Task.sleep(for: .milliseconds(50)) }
            try await a.saveSession("ops", late, generation: 3, registration: registration, fence: 3, by: "a")
            for _ in 0..<100 where heard.changes.withLock({ $0.count < 2 }) { try await Task.sleep(for: .milliseconds(50)) }
            group.cancelAll()
        }
        #expect(heard.changes.withLock { $0 } == [.resync, .changed(context: "ops", generation: 3, by: "a")])
        try await a.leave(instance: "a", spacing: 2)
        #expect(try await b.acquireLeases(instance: "b", seconds: 600, limit: 1) == [LeaseGrant(context: "ops", fence: 4)],
                "a daemon that leaves frees its leases at once")
        }
        }
    }

    @Test func aRestartedServerCostsTheCallsMadeWhileItWasDownNotTheStore() async throws {
        guard let engine = try Engine.start(.postgresql) else { return }
        defer { engine.stop() }
        let server = try #require(engine.server)
        try await engine.with(try SymmetricKey.generate()) { store in
            try await store.saveRegistration("ops", kind: .provider, IdentityRegistration(kind: .psd2Provider))
            server.halt("immediate")
            await #expect { _ = try await store.contexts() } throws: { error in
                let error = error as? StoreError
                return (error?.code == .database || error?.code == .timeout) && "\(error!)".contains(server.url)
            }
            #expect(!store.calls.health.reachable, "the store's health says so")
            try server.restart()
            // The pool connects again at a later call.
            #expect(await eventually(within: .seconds(20)) { (try? await store.contexts())?.map(\.name) == ["ops"] })
            #expect(store.calls.health.reachable)
        }
    }
}

/// Changes a listener heard, shared with the test's task.
final class Heard: Sendable {
    let changes = Mutex<[StoreChange]>([])
}

/// A store that does not answer costs each call its deadline and `store_timeout`, never a wait: the health says
/// so (once), and the next answered call puts it right.
extension StateBackendConformanceTests {
    @Test(arguments: Engine.Kind.allCases)
    func aStoreThatDoesNotAnswerCostsTheDeadlineNotAWait(_ kind: Engine.Kind) async throws {
        guard let engine = try Engine.start(kind) else { return }
        defer { engine.stop() }
        let registration = try await registration()
        let session = session
        let deadline = Duration.milliseconds(500)
        try await engine.with(try SymmetricKey.generate(), timeout: deadline) { store in
            try await store.saveRegistration("ops", kind: .apiKey, registration)
            // Hold the store: PostgreSQL frozen (SIGSTOP: connections open, nothing answers); SQLite locked by another
            // process's write transaction (the sqlite3 shell, as another program on the host would).
            var holder: SQLiteWriteLock?
            if let server = engine.server {
                server.freeze()
            } else {
                holder = try await SQLiteWriteLock(engine.directory.path("state/\(StateStore.fileName)"),
                                                   log: engine.directory.path("holder.log"))
            }
            // Timed on the suite's own thread: other suites' blocking helpers cannot time the test instead of the store.
            var timings: [Duration] = []
            for _ in 0..<3 {
                let started = ContinuousClock.now
                await #expect { try await store.saveSession("ops", session, generation: 1, registration: registration) }
                    throws: { ($0 as? StoreError)?.code == .timeout }
                timings.append(ContinuousClock.now - started)
            }
            #expect(timings.allSatisfy { $0 >= deadline * 0.9 && $0 < deadline + .milliseconds(1_500) },
                    "each call costs its deadline, not more: \(timings)")
            let health = store.calls.health
            #expect(!health.reachable && health.failingSince != nil && health.consecutiveFailures == 3)
            #expect(health.lastError?.contains("store_timeout") == true || health.lastError?.contains("did not answer") == true
                    || health.lastError?.contains("locked") == true)
            engine.server?.thaw()
            try await holder?.release()
            // Nothing was written by the calls that timed out; the next call works and the store is healthy.
            #expect(await eventually(within: .seconds(20)) {
                (try? await store.saveSession("ops", session, generation: 2, registration: registration)) != nil
            })
            #expect(store.calls.health.reachable && store.calls.health.failingSince == nil)
            #expect(try await store.context("ops")?.generation == 2)
        }
    }
}
