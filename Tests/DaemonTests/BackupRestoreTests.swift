import Foundation
import TestThreads
import Testing
import TestSupport

/// `bunq-sessionctl backup` while the daemon renews, and `bunq-sessiond --restore` into a fresh state directory:
/// the restored daemon serves every identity without registering anything again. Against the sandbox with its
/// limits on (scaled to a fiftieth, so ten-second sessions renew all the while the backups run).
@Suite(.ownThread) struct BackupRestoreTests {
    @Test func aBackupTakenUnderLoadRestoresIntoAFreshDirectoryWithoutRegisteringAgain() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "10"], limits: .scaled(0.02))
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false,
                                     moreKeys: try (1...4).map { _ in try sandbox.newAPIKey() })
        let names = ["ops"] + (1...4).map { "id-\($0)" }
        let daemon = try ChildProcess(Binaries.daemon, ["--config", config], log: dir.path("daemon.log"))
        defer { _ = daemon.stop() }
        #expect(await daemon.waitFor(.seconds(60)) { $0.contains("[bunq_sessiond] ready") }, "\(daemon.log)")
        let ctl = Binaries.directory.appendingPathComponent("bunq-sessionctl").path

        // Backups while sessions rotate (each session lives 10 s) and tokens are fetched.
        let rotationsBefore = rotations(in: daemon.log).count
        var last = ""
        for round in 0..<8 {
            let file = dir.path("backup-\(round).sqlite")
            let output = try Command.run([ctl, "backup", "--socket", dir.path("socket"), file])
            #expect(output.status == 0, "\(output.stderrText)")
            #expect(output.stdoutText.contains("\(names.count) contexts"), "\(output.stdoutText)")
            #expect(output.stderrText.contains("keep a copy of it apart from the backup"), "the key is not in the backup")
            var info = stat()
            #expect(stat(file, &info) == 0 && info.st_mode & 0o777 == 0o600, "mode 0600")
            #expect(!FileManager.default.fileExists(atPath: file + "-wal"), "one self-contained file")
            for name in names {
                _ = try RawSocketClient(dir.path("socket")).call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"\#(name)"}}"#)
            }
            last = file
            try await Task.sleep(for: .milliseconds(700))
        }
        #expect(rotations(in: daemon.log).count > rotationsBefore, "renewals went on during the backups")
        let backup = try String(decoding: Data(contentsOf: URL(fileURLWithPath: last)), as: UTF8.self)
        #expect(!backup.contains(try dir.read("ops.key").trimmingCharacters(in: .whitespacesAndNewlines)), "still sealed")
        #expect(daemon.stop() == 0)
        let installations = try sandbox.stat("installations"), devices = try sandbox.stat("device_servers")

        // A fresh directory: refused until the key is back, refused when not empty, refused with a wrong key.
        let fresh = dir.path("fresh-state")
        let restoredConfig = try dir.write("restored.yaml", try String(contentsOfFile: config, encoding: .utf8)
            .replacingOccurrences(of: dir.path("state"), with: fresh)
            .replacingOccurrences(of: "path: \(dir.path("socket"))", with: "path: \(dir.path("restored.socket"))"))
        let noKey = try Command.run([Binaries.daemon, "--config", restoredConfig, "--restore", last])
        #expect(noKey.status == 73 && noKey.stderrText.contains("sealed by its master key"), "\(noKey.stderrText)")
        try FileManager.default.createDirectory(atPath: fresh, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        _ = try dir.write("fresh-state/master.key", String(repeating: "ab", count: 32))
        chmod(dir.path("fresh-state/master.key"), 0o600)
        let wrongKey = try Command.run([Binaries.daemon, "--config", restoredConfig, "--restore", last])
        #expect(wrongKey.status == 73 && wrongKey.stderrText.contains("is not the key that sealed"), "\(wrongKey.stderrText)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: fresh) == ["master.key"], "a failed restore leaves nothing")
        try FileManager.default.removeItem(atPath: dir.path("fresh-state/master.key"))
        try FileManager.default.copyItem(atPath: dir.path("state/master.key"), toPath: dir.path("fresh-state/master.key"))
        let restored = try Command.run([Binaries.daemon, "--config", restoredConfig, "--restore", last])
        #expect(restored.status == 0 && restored.stdoutText.contains("restored \(names.count) contexts"), "\(restored.stderrText)")
        let again = try Command.run([Binaries.daemon, "--config", restoredConfig, "--restore", last])
        #expect(again.status == 73 && again.stderrText.contains("is not empty") && again.stderrText.contains(fresh), "\(again.stderrText)")

        // The restored state goes live: every identity served, nothing registered again.
        let second = try ChildProcess(Binaries.daemon, ["--config", restoredConfig], log: dir.path("restored.log"))
        defer { _ = second.stop() }
        #expect(await second.waitFor(.seconds(60)) { $0.contains("[bunq_sessiond] ready") }, "\(second.log)")
        // Each token is tried at bunq as it is served: a ten-second session handed out a second before its end (the
        // margin) has expired by the time a slower identity is served, so trying them all at the end would measure
        // how long the others took, not whether the daemon handed out a working token.
        var served: [String: String] = [:]
        _ = try await eventually(within: .seconds(20), every: .milliseconds(200)) {
            for name in names where served[name] == nil {
                let answer = try RawSocketClient(dir.path("restored.socket"))
                    .call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"\#(name)"}}"#)
                guard let token = result(answer)?["token"] as? String else { continue }
                served[name] = token
                let status = try sandbox.userStatus(token: token)
                #expect(status == 200, "\(name)'s token, just served: HTTP \(status)")
            }
            return served.count == names.count
        }
        #expect(served.count == names.count, "\(second.log)")
        #expect(try sandbox.stat("installations") == installations && sandbox.stat("device_servers") == devices,
                "nothing registered again")
        #expect(try Command.run([Binaries.daemon, "--config", try writePostgresConfig(dir), "--restore", last]).status == 78,
                "a PostgreSQL store is restored with PostgreSQL's tools")
    }

    /// A configuration on the PostgreSQL backend (never started: only its backend matters).
    func writePostgresConfig(_ dir: TemporaryDirectory) throws -> String {
        _ = try dir.write("pg.key", String(repeating: "cd", count: 32))
        chmod(dir.path("pg.key"), 0o600)
        return try dir.write("pg.yaml", """
            api_keys: []
            socket: {path: \(dir.path("pg.socket"))}
            state: {directory: \(dir.path("pg-state")), backend: postgresql, master_key_file: \(dir.path("pg.key")),
                    postgresql: {url: 'postgresql://u@127.0.0.1:1/db'}}
            """)
    }
}
