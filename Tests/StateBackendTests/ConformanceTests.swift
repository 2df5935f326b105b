import BunqAPI
import BunqCrypto
import Foundation
import Logging
import PostgresState
import SessionKeeper
import Synchronization
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

    func open(_ key: SymmetricKey, keySource: String = "the test's key") throws -> any StateBackend {
        switch kind {
        case .sqlite:
            return try StateStore(directory: directory.path("state"), masterKey: key, keySource: keySource)
        case .postgresql:
            let settings = try PostgresSettings.parse(url: server!.url, password: server!.password)
            return try PostgresState(settings: settings, masterKey: key, keySource: keySource, logger: Logger(label: "test"))
        }
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
@Suite struct StateBackendConformanceTests {
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
        do {
            let store = try engine.open(key)
            try store.saveRegistration("ops", kind: .apiKey, registration)
            try store.saveSession("ops", session, generation: 3, registration: registration)
            try store.saveRegistration("provider", kind: .provider, IdentityRegistration(kind: .psd2Provider))
            migrations = try store.appliedMigrations()
            #expect(!migrations.isEmpty)
        }
        let reopened = try engine.open(key)
        #expect(try reopened.appliedMigrations() == migrations, "a reopen applies nothing again")
        let contexts = try reopened.contexts()
        #expect(contexts.map(\.name) == ["ops", "provider"])
        #expect(contexts.first == StoredContext(name: "ops", kind: .apiKey, registration: registration, session: session, generation: 3))
        #expect(contexts.last?.session == nil && contexts.last?.registration.kind == .psd2Provider)
        #expect(try reopened.records() == [
            ContextRecord(name: "ops", kind: .apiKey, session: session, generation: 3, serverPublicKeyPEM: registration.serverPublicKeyPEM),
            ContextRecord(name: "provider", kind: .provider, session: nil, generation: 0, serverPublicKeyPEM: nil),
        ])
        #expect(try reopened.context("provider")?.kind == .provider && reopened.context("ghost") == nil)
        // Sealed at rest: neither the API key, the installation key nor the token is in what the engine holds.
        let held = try engine.everything()
        #expect(!held.isEmpty && !held.contains(apiKey) && !held.contains(token) && !held.contains("PRIVATE KEY"))
        try reopened.removeContext("ops")
        #expect(try reopened.contexts().map(\.name) == ["provider"])
    }

    @Test(arguments: Engine.Kind.allCases)
    func writesForAContextThatIsGoneAreRefusedNeverUpserted(_ kind: Engine.Kind) async throws {
        guard let engine = try Engine.start(kind) else { return }
        defer { engine.stop() }
        let store = try engine.open(try SymmetricKey.generate())
        let registration = try await registration()
        try store.saveRegistration("ops", kind: .apiKey, registration)
        try store.removeContext("ops")
        for write in [{ try store.updateRegistration("ops", registration) },
                      { try store.saveSession("ops", session, generation: 2, registration: registration) }] {
            #expect { try write() } throws: { ($0 as? StoreError)?.code == .missing }
        }
        #expect(try store.contexts().isEmpty, "no write brought the removed context back")
        // Import replaces by name, sessions included.
        try store.importContexts([StoredContext(name: "a", kind: .apiKey, registration: registration, session: session, generation: 5),
                                  StoredContext(name: "b", kind: .oauthUser, registration: registration)])
        try store.importContexts([StoredContext(name: "a", kind: .apiKey, registration: registration, session: nil, generation: 6)])
        let imported = try store.contexts()
        #expect(imported.map(\.name) == ["a", "b"] && imported[0].generation == 6 && imported[0].session == nil)
    }

    @Test(arguments: Engine.Kind.allCases)
    func aStateOpensOnlyWithTheKeyThatSealedIt(_ kind: Engine.Kind) async throws {
        guard let engine = try Engine.start(kind) else { return }
        defer { engine.stop() }
        let key = try SymmetricKey.generate()
        try engine.open(key).saveRegistration("ops", kind: .apiKey, try await registration())
        #expect {
            _ = try engine.open(try SymmetricKey.generate(), keySource: "/etc/other.key")
        } throws: { error in
            let error = error as? StoreError
            return error?.code == .masterKey && error?.message.contains("/etc/other.key") == true
        }
        #expect(try engine.open(key).context("ops") != nil)
    }
}

extension StateBackendConformanceTests {
    @Test(arguments: Engine.Kind.allCases)
    func anOAuthStateIsSingleUseExpiresAndIsSharedByEveryOpener(_ kind: Engine.Kind) async throws {
        guard let engine = try Engine.start(kind) else { return }
        defer { engine.stop() }
        let key = try SymmetricKey.generate()
        let issuer = try engine.open(key)
        let now = Date()
        try issuer.saveOAuthState("STATE-live-0123456789", redirectURI: "https://example.com/cb", expiresAt: now.addingTimeInterval(600))
        try issuer.saveOAuthState("STATE-old-0123456789", redirectURI: "https://example.com/cb", expiresAt: now.addingTimeInterval(1))
        // Another opener of the store (another daemon, or this one after a restart) completes it, once.
        let completer = try engine.open(key)
        #expect(try completer.takeOAuthState("STATE-live-0123456789", now: now) == "https://example.com/cb")
        #expect(try issuer.takeOAuthState("STATE-live-0123456789", now: now) == nil, "single use")
        #expect(try completer.takeOAuthState("STATE-old-0123456789", now: now.addingTimeInterval(2)) == nil, "expired")
        #expect(try completer.takeOAuthState("never-issued", now: now) == nil)
        // Kept as a digest only.
        try issuer.saveOAuthState("STATE-secret-abcdef", redirectURI: "https://example.com/cb", expiresAt: now.addingTimeInterval(600))
        if kind == .postgresql, let server = engine.server {
            #expect(!(try server.psql("SELECT digest FROM oauth_state", database: server.database)).contains("STATE-secret"))
        } else {
            #expect(!(try engine.everything()).contains("STATE-secret"))
        }
    }
}

/// What only the shared engine must do: many daemons opening it at once, and a server that goes away and returns.
@Suite struct PostgresStateTests {
    @Test func daemonsStartingTogetherMigrateOnceAndShareTheKey() async throws {
        guard let engine = try Engine.start(.postgresql) else { return }
        defer { engine.stop() }
        let key = try SymmetricKey.generate()
        let opened = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<4 {
                group.addTask { (try? engine.open(key)) != nil }
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
        let a = try #require(try engine.open(key) as? PostgresState), b = try #require(try engine.open(key) as? PostgresState)
        let registration = IdentityRegistration(kind: .apiKey, secret: "sandbox_SECRETAPIKEY0123456789abcdef")
        let first = try #require(try a.insertRegistration("ops", kind: .apiKey, registration, by: "a", leaseSeconds: 600))
        #expect(first.fence == 1)
        #expect(try b.insertRegistration("ops", kind: .apiKey, registration, by: "b", leaseSeconds: 600) == nil,
                "created once, however many daemons try")
        #expect(try b.acquireLeases(instance: "b", seconds: 600, limit: 10).isEmpty, "held by a")
        let session = SessionInfo(id: 1, token: "SESSIONTOKEN-one", userId: 5, created: Date(), expiresAt: Date() + 600)
        try a.saveSession("ops", session, generation: 1, registration: registration, fence: first.fence, by: "a")

        // a stops renewing (paused): its lease runs out and b takes it, under a higher fence.
        #expect(try a.renewLeases(instance: "a", seconds: 0.2) == [first])
        try await Task.sleep(for: .milliseconds(500))
        #expect(try a.renewLeases(instance: "a", seconds: 5).isEmpty, "an expired lease is not extended")
        let taken = try b.acquireLeases(instance: "b", seconds: 600, limit: 10)
        #expect(taken == [LeaseGrant(context: "ops", fence: 2)])
        let late = SessionInfo(id: 2, token: "SESSIONTOKEN-late", userId: 5, created: Date(), expiresAt: Date() + 600)
        #expect { try a.saveSession("ops", late, generation: 2, registration: registration, fence: first.fence, by: "a") }
            throws: { ($0 as? StoreError)?.code == .fenced }
        #expect { try a.updateRegistration("ops", registration, fence: first.fence, by: "a") }
            throws: { ($0 as? StoreError)?.code == .fenced }
        try b.saveSession("ops", session, generation: 2, registration: registration, fence: 2, by: "b")
        #expect { try b.saveSession("ops", session, generation: 2, registration: registration, fence: 2, by: "b") }
            throws: { ($0 as? StoreError)?.code == .fenced }
        #expect(try a.context("ops")?.generation == 2 && a.context("ops")?.session?.token == session.token)

        // Membership and the fair share's inputs.
        _ = try a.heartbeat(instance: "a", process: "a-1", egressGroup: "g1", window: 600)
        let (members, contexts) = try b.heartbeat(instance: "b", process: "b-1", egressGroup: "g1", window: 600)
        #expect { _ = try b.heartbeat(instance: "a", process: "a-2", egressGroup: "g1", window: 600) }
            throws: { ($0 as? StoreError)?.code == .locked && "\($0)".contains("cluster.instance a") }
        #expect(members.map(\.instance) == ["a", "b"] && members.map(\.leases) == [0, 1] && contexts == 1)
        try b.releaseLeases(instance: "b", ["ops"])
        #expect(try a.acquireLeases(instance: "a", seconds: 600, limit: 1) == [LeaseGrant(context: "ops", fence: 3)])

        // One session-server call per group at a time, spaced from the end of the last.
        #expect(try a.claimSessionServer(egressGroup: "g1", instance: "a", hold: 30) == nil)
        let wait = try #require(try b.claimSessionServer(egressGroup: "g1", instance: "b", hold: 30))
        #expect(wait > 25, "held while a calls")
        #expect(try b.claimSessionServer(egressGroup: "g2", instance: "b", hold: 30) == nil, "another group, another IP")
        let released = ContinuousClock.now
        try a.releaseSessionServer(egressGroup: "g1", instance: "a", spacing: 2)
        let spaced = try b.claimSessionServer(egressGroup: "g1", instance: "b", hold: 30)
        #expect(spaced.map { $0 > 0 && $0 <= 2 } ?? (ContinuousClock.now - released >= .seconds(2)), "opens one spacing after the call")
        try await Task.sleep(for: .milliseconds(2_100))
        #expect(try b.claimSessionServer(egressGroup: "g1", instance: "b", hold: 30) == nil)

        // A change committed by one daemon reaches the other's listener.
        let heard = Heard()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await b.listen { change in heard.changes.withLock { $0.append(change) } } }
            for _ in 0..<100 where !heard.changes.withLock({ $0.contains(.resync) }) { try await Task.sleep(for: .milliseconds(50)) }
            try a.saveSession("ops", late, generation: 3, registration: registration, fence: 3, by: "a")
            for _ in 0..<100 where heard.changes.withLock({ $0.count < 2 }) { try await Task.sleep(for: .milliseconds(50)) }
            group.cancelAll()
        }
        #expect(heard.changes.withLock { $0 } == [.resync, .changed(context: "ops", generation: 3, by: "a")])
        try a.leave(instance: "a", spacing: 2)
        #expect(try b.acquireLeases(instance: "b", seconds: 600, limit: 1) == [LeaseGrant(context: "ops", fence: 4)],
                "a daemon that leaves frees its leases at once")
    }

    @Test func aRestartedServerCostsTheCallsMadeWhileItWasDownNotTheStore() async throws {
        guard let engine = try Engine.start(.postgresql) else { return }
        defer { engine.stop() }
        let store = try engine.open(try SymmetricKey.generate())
        try store.saveRegistration("ops", kind: .provider, IdentityRegistration(kind: .psd2Provider))
        let server = try #require(engine.server)
        server.halt("immediate")
        #expect { _ = try store.contexts() } throws: { error in
            let error = error as? StoreError
            return error?.code == .database && error?.message.contains(server.url) == true
        }
        try server.restart()
        #expect(try store.contexts().map(\.name) == ["ops"], "the next call connects again")
    }
}

/// Changes a listener heard, shared with the test's task.
final class Heard: Sendable {
    let changes = Mutex<[StoreChange]>([])
}
