import Foundation
import Testing
import TestSupport

/// A daemon deployment on the PostgreSQL backend for one test: a PostgreSQL server of the test's own, the sandbox
/// (bunq's limits, scaled), and a configuration file with the API-key identity `ops` (and the PSD2 provider, if
/// asked) whose state is in PostgreSQL, sealed with an operator's key. Daemons are started by the test.
final class PostgresDeployment: Sendable {
    let server: PostgresServer
    let dir: TemporaryDirectory
    let sandbox: Sandbox
    /// The configuration file's path.
    let config: String
    var socket: String { dir.path("socket") }

    private init(server: PostgresServer, dir: TemporaryDirectory, sandbox: Sandbox, config: String) {
        self.server = server
        self.dir = dir
        self.sandbox = sandbox
        self.config = config
    }

    /// Nil where PostgreSQL cannot run: reported as `SKIPPED: what: reason`, a failure under `CI=true`.
    static func make(_ what: String, provider: Bool = false) async throws -> PostgresDeployment? {
        if let reason = PostgresServer.unavailable {
            #expect(!Skip.report("\(what): \(reason)"))
            return nil
        }
        let server = try PostgresServer()
        let dir = try TemporaryDirectory()
        do {
            // Sessions of 10 minutes (the provider's first one too): these tests restart daemons, not sessions.
            let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "600"]
                                                      + (provider ? ["--psd2-first-session-timeout", "600"] : []))
            let written = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: provider,
                                          firstSession: provider ? 600 : 20)
            // The key every daemon of the store shares: the operator's, never generated.
            let config = onPostgreSQL(try String(contentsOfFile: written, encoding: .utf8), dir: dir, server: server,
                                      keyFile: try writeMasterKey(dir))
            return PostgresDeployment(server: server, dir: dir, sandbox: sandbox, config: try dir.write("config.yaml", config))
        } catch {
            server.stop()
            dir.remove()
            throw error
        }
    }

    /// Starts a daemon with the configuration, logging to `log` in the test's directory, and awaits READY.
    func startDaemon(_ log: String) async throws -> ChildProcess {
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path(log))
        #expect(await daemon.waitFor(.seconds(60)) { $0.contains("[bunq_sessiond] ready") }, "\(daemon.log)")
        return daemon
    }

    func stop() {
        _ = sandbox.child.stop()
        server.stop()
        dir.remove()
    }
}
