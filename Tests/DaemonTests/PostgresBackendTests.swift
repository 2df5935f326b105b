import Foundation
import TestThreads
import Testing
import TestSupport

/// The daemon on the PostgreSQL backend, end to end: a PostgreSQL server of the test's own, the sandbox with its
/// limits on (scaled), and a restart that restores everything from PostgreSQL without registering anything again.
@Suite(.ownThread) struct PostgresBackendTests {
    @Test func theDaemonKeepsItsStateInPostgreSQLAndRestoresItFromThere() async throws {
        guard let deployment = try await PostgresDeployment.make("PostgreSQL backend end to end") else { return }
        defer { deployment.stop() }
        let (server, dir, sandbox, path) = (deployment.server, deployment.dir, deployment.sandbox, deployment.config)
        #expect(try String(contentsOfFile: path, encoding: .utf8).contains("backend: postgresql"))
        func start(_ name: String) async throws -> ChildProcess { try await deployment.startDaemon(name) }
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

    @Test func anSQLiteStateMovesInWithoutRegisteringAgainAndTheImportIsIdempotent() async throws {
        if let reason = PostgresServer.unavailable {
            #expect(!Skip.report("--import-state: \(reason)"))
            return
        }
        let server = try PostgresServer()
        defer { server.stop() }
        // A daemon on SQLite first (its own generated master.key), under bunq's limits (scaled).
        let running = try await RunningDaemon.start(provider: false)
        let token = { (socket: String) -> String? in
            result(try RawSocketClient(socket).call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#))?["token"]
                as? String
        }
        let issued = try token(running.socket)
        #expect(issued != nil)
        _ = running.daemon.stop()
        let installations = try running.sandbox.stat("installations")
        defer { running.stop() }

        // The same identities on PostgreSQL, with the store's own key and another state directory.
        let sqliteState = running.dir.path("state")
        let config = onPostgreSQL(try String(contentsOfFile: running.config, encoding: .utf8), dir: running.dir, server: server,
                                  keyFile: try writeMasterKey(running.dir, "shared.key"), stateDirectory: running.dir.path("pg-state"))
        let path = try running.dir.write("pg.yaml", config)
        let first = try Command.run([Binaries.daemon, "--config", path, "--import-state", sqliteState])
        #expect(first.status == 0 && first.stdoutText.contains("imported 1 contexts") && first.stdoutText.contains("(ops)"),
                "\(first.stdoutText)\(first.stderrText)")
        let again = try Command.run([Binaries.daemon, "--config", path, "--import-state", sqliteState])
        #expect(again.status == 0 && again.stdoutText.contains("imported 0 contexts") && again.stdoutText.contains("kept 1"),
                "\(again.stdoutText)\(again.stderrText)")
        // Into SQLite is no import; a directory without a state is named.
        #expect(try Command.run([Binaries.daemon, "--config", running.config, "--import-state", sqliteState]).status == 78)
        let empty = try Command.run([Binaries.daemon, "--config", path, "--import-state", running.dir.path("nothing")])
        #expect(empty.status == 73 && empty.stderrText.contains("holds no state"), "\(empty.stderrText)")

        let daemon = try ChildProcess(Binaries.daemon, ["--config", path], log: running.dir.path("pg-daemon.log"))
        defer { _ = daemon.stop() }
        #expect(await daemon.waitFor(.seconds(60)) { $0.contains("[bunq_sessiond] ready") }, "\(daemon.log)")
        #expect(try token(running.socket) == issued, "the session moved in, re-sealed under the store's key")
        #expect(try running.sandbox.stat("installations") == installations, "nothing registered again")
    }

    @Test func anOAuthStateIssuedBeforeARestartCompletesAfterIt() async throws {
        guard let deployment = try await PostgresDeployment.make("OAuth states in PostgreSQL", provider: true) else { return }
        defer { deployment.stop() }
        let dir = deployment.dir
        func start(_ name: String) async throws -> ChildProcess { try await deployment.startDaemon(name) }
        func call(_ method: String, _ params: String) async throws -> [String: Any] {
            var answer: [String: Any] = [:]
            for _ in 0..<150 {
                answer = try RawSocketClient(dir.path("socket")).call(#"{"jsonrpc":"2.0","id":1,"method":"\#(method)","params":\#(params)}"#)
                // The provider goes live a few session-server slots after start (bunq's limits, scaled).
                guard errorCode(answer) == 1003 || errorCode(answer) == 1005 else { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            return answer
        }

        let first = try await start("daemon-1.log")
        let authorization = try #require(result(try await call("oauth.authorize_url", "{}")), "\(first.log)")
        let url = try #require(authorization["url"] as? String), state = try #require(authorization["state"] as? String)
        let location = try Command.check(["curl", "-s", "-o", "/dev/null", "-w", "%{redirect_url}", url]).stdoutText
        let code = try #require(URLComponents(string: location)?.queryItems?.first { $0.name == "code" }?.value, "\(location)")
        #expect(first.stop() == 0)

        // Another daemon (here: the next start) completes what the first issued: the state is in the store.
        let second = try await start("daemon-2.log")
        defer { _ = second.stop() }
        let completed = try await call("oauth.complete", #"{"code":"\#(code)","state":"\#(state)"}"#)
        let context = try #require(result(completed)?["context"] as? String, "\(completed) \(second.log)")
        #expect(context.hasPrefix("user-"))
        #expect(result(try await call("session.get", #"{"context":"\#(context)"}"#))?["token"] is String)
        let again = try await call("oauth.complete", #"{"code":"\#(code)","state":"\#(state)"}"#)
        #expect(errorCode(again) == 1006, "a state completes once")
    }
}
