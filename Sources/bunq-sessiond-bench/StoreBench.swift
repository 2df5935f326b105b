import BunqAPI
import BunqCrypto
import Foundation
import Logging
import PostgresState
import SessionKeeper
import TestSupport

/// The state store's figures (issue 25): each operation's latency on SQLite and on PostgreSQL through the async
/// interface with its deadline, and `session.get` / `request.sign` on a daemon whose PostgreSQL is frozen
/// (SIGSTOP) against the same daemon with it running: serving never touches the store, so the two should match.
extension Bench {
    static func storeRows(bin: String, work: String, base: String, seconds: Double) async throws -> [String] {
        var rows: [String] = []
        let key = try SymmetricKey.generate()
        let sqlite = try StateStore(directory: work + "/store-bench-sqlite", masterKey: key)
        rows += try await operationRows(sqlite, engine: "SQLite")
        if let reason = PostgresServer.unavailable {
            rows.append("| PostgreSQL store rows | skipped: \(reason) |")
            rows.forEach(emit)
            return rows
        }
        let server = try PostgresServer()
        defer { server.stop() }
        let postgres = try PostgresState(settings: try PostgresSettings.parse(url: server.url, password: server.password),
                                         masterKey: key, keySource: "the bench's key", logger: Logger(label: "bench"))
        rows += try await postgres.withRunning { try await operationRows(postgres, engine: "PostgreSQL") }
        rows.forEach(emit)
        // The daemon shares the store, so it gets the key that sealed it.
        let keyFile = work + "/frozen-master.key"
        try key.rawBytes.map { String(format: "%02x", $0) }.joined().write(toFile: keyFile, atomically: true, encoding: .utf8)
        chmod(keyFile, 0o600)
        let frozen = try frozenRows(bin: bin, work: work, base: base, server: server, keyFile: keyFile, seconds: seconds)
        frozen.forEach(emit)
        return rows + frozen
    }

    /// 300 calls of each operation against a store holding 1,000 contexts: p50 and p99.
    static func operationRows(_ store: any StateBackend, engine: String) async throws -> [String] {
        var registration = IdentityRegistration(kind: .oauthUser, secret: String(repeating: "a", count: 64))
        registration.installationKeyPEM = try RSAPrivateKey.generateBlocking().pkcs8PEM()
        registration.installationToken = String(repeating: "b", count: 64)
        registration.serverPublicKeyPEM = try RSAPrivateKey.generateBlocking().publicKey.pem()
        registration.deviceBound = true
        let now = Date()
        let session = { (index: Int) in
            SessionInfo(id: index, token: String(format: "%064x", index), userId: index, created: now,
                        expiresAt: now.addingTimeInterval(86_400))
        }
        try await store.importContexts((0..<1_000).map {
            StoredContext(name: "user-\($0)", kind: .oauthUser, registration: registration, session: session($0), generation: 1)
        })
        var rows: [String] = []
        func measure(_ name: String, _ count: Int = 300, _ body: (Int) async throws -> Void) async throws {
            var samples: [UInt64] = []
            for index in 0..<count {
                let started = DispatchTime.now().uptimeNanoseconds
                try await body(index)
                samples.append(DispatchTime.now().uptimeNanoseconds - started)
            }
            samples.sort()
            rows.append("| store `\(name)`, \(engine) | p50 \(format(samples[samples.count / 2])) | "
                + "p99 \(format(samples[samples.count * 99 / 100])) |")
        }
        try await measure("save_session") { index in
            try await store.saveSession("user-\(index)", session(index), generation: 2 + index, registration: registration)
        }
        try await measure("read_context") { index in _ = try await store.context("user-\(index)") }
        try await measure("save_oauth_state") { index in
            try await store.saveOAuthState("state-\(index)", redirectURI: "https://example.com/cb", expiresAt: now + 600)
        }
        try await measure("take_oauth_state") { index in _ = try await store.takeOAuthState("state-\(index)", now: now) }
        try await measure("read_records (1,000 contexts)", 30) { _ in _ = try await store.records() }
        return rows
    }

    /// A daemon on PostgreSQL: the token path and signatures with the store running, then frozen.
    static func frozenRows(bin: String, work: String, base: String, server: PostgresServer, keyFile: String,
                           seconds: Double) throws -> [String] {
        let socket = work + "/frozen.socket", config = work + "/frozen.yaml"
        try """
            bunq: {api_base_url: '\(base)/v1/', oauth_authorize_url: '\(base)/auth', oauth_token_url: '\(base)/v1/token',
                   rate_limits: unlimited}
            socket: {path: \(socket)}
            state:
              directory: \(work)/frozen-state
              backend: postgresql
              master_key_file: \(keyFile)
              timeout: 1s
              postgresql: {url: '\(server.url)', password_file: \(server.passwordFile)}
            api_keys:
              - {name: ops, key_file: \(work)/ops.key}
            access: {admin: {users: ['\(getuid())']}}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let daemon = try Child(bin + "/bunq-sessiond", ["--config", config], log: work + "/frozen.log")
        defer { daemon.stop() }
        guard daemon.waitFor("[bunq_sessiond] ready", timeout: 60), waitLive(socket) else {
            throw BenchError("the daemon on PostgreSQL did not get ready: \(daemon.log.suffix(2000))")
        }
        let getLine = #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#
        let signLine = #"{"jsonrpc":"2.0","id":1,"method":"request.sign","params":{"context":"ops","body":"{\"amount\":\"1.00\"}"}}"#
        _ = load(socket, getLine, connections: 50, seconds: 1)
        _ = load(socket, signLine, connections: 4, seconds: 1)
        var rows: [String] = []
        for frozen in [false, true] {
            if frozen { server.freeze() }
            defer { if frozen { server.thaw() } }
            let what = frozen ? "PostgreSQL frozen (SIGSTOP)" : "PostgreSQL running"
            let get = load(socket, getLine, connections: 50, seconds: seconds)
            rows.append("| `session.get`, 50 connections, \(what) | \(Int(get.rate)) /s | p50 \(format(get.p50)) | p99 \(format(get.p99)) |")
            let sign = load(socket, signLine, connections: 4, seconds: seconds)
            rows.append("| `request.sign`, 4 connections, \(what) | \(Int(sign.rate)) /s | p50 \(format(sign.p50)) | p99 \(format(sign.p99)) |")
        }
        return rows
    }
}
