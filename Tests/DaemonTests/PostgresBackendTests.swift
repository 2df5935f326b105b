import Foundation
import Testing
import TestSupport

/// The daemon on the PostgreSQL backend, end to end: a PostgreSQL server of the test's own, the sandbox with its
/// limits on (scaled), and a restart that restores everything from PostgreSQL without registering anything again.
@Suite struct PostgresBackendTests {
    @Test func theDaemonKeepsItsStateInPostgreSQLAndRestoresItFromThere() async throws {
        if let reason = PostgresServer.unavailable {
            #expect(!Skip.report("PostgreSQL backend end to end: \(reason)"))
            return
        }
        let server = try PostgresServer()
        defer { server.stop() }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "600"])
        defer { _ = sandbox.child.stop() }
        // The key every daemon of the store shares: the operator's, never generated.
        let keyFile = try dir.write("master.key", (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined())
        chmod(keyFile, 0o600)
        var config = try String(contentsOfFile: try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false),
                                encoding: .utf8)
        config = config.replacingOccurrences(of: "state:\n  directory: \(dir.path("state"))\n", with: """
            state:
              directory: \(dir.path("state"))
              backend: postgresql
              master_key_file: \(keyFile)
              postgresql: {url: '\(server.url)', password_file: \(server.passwordFile)}

            """)
        #expect(config.contains("backend: postgresql"))
        let path = try dir.write("config.yaml", config)

        func start(_ name: String) async throws -> ChildProcess {
            let daemon = try ChildProcess(Binaries.daemon, ["--config", path], log: dir.path(name))
            #expect(await daemon.waitFor(.seconds(60)) { $0.contains("[bunq_sessiond] ready") }, "\(daemon.log)")
            return daemon
        }
        func token() async throws -> String? {
            for _ in 0..<100 {
                let answer = result(try RawSocketClient(dir.path("socket")).call(
                    #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#))
                if let token = answer?["token"] as? String { return token }
                try await Task.sleep(for: .milliseconds(200))
            }
            return nil
        }

        let first = try await start("daemon-1.log")
        let issued = try await token()
        #expect(issued != nil, "\(first.log)")
        #expect(first.stop() == 0)
        // The rows are in PostgreSQL, sealed; nothing of the state went to the state directory but the lock.
        #expect(try server.psql("SELECT name || ':' || generation FROM context", database: server.database)
            .trimmingCharacters(in: .whitespacesAndNewlines) == "ops:1")
        let dump = try server.psql("SELECT encode(token, 'escape') FROM session", database: server.database)
        #expect(!dump.isEmpty && !dump.contains(issued ?? "-"), "the token is sealed in PostgreSQL")
        #expect(!FileManager.default.fileExists(atPath: dir.path("state/bunq-sessiond.sqlite"))
                && !FileManager.default.fileExists(atPath: dir.path("state/master.key")))
        let installations = try sandbox.stat("installations")

        let second = try await start("daemon-2.log")
        defer { _ = second.stop() }
        #expect(try await token() == issued, "the session comes back from PostgreSQL: \(second.log)")
        #expect(try sandbox.stat("installations") == installations, "nothing registered again")
        #expect(second.log.contains("identity restored"), "\(second.log)")
    }
}
