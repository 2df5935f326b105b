import Foundation
import TestThreads
import Testing
import TestSupport

/// One daemon per state directory: a second one on the same state exits at once, naming the first, and leaves
/// the first's socket alone; a state without its master key is an error, never a new key.
@Suite(.ownThread) struct OneDaemonPerStateTests {
    @Test func aSecondDaemonExitsNamingTheFirstAndAMissingKeyIsAnError() async throws {
        let running = try await RunningDaemon.start(provider: false)
        defer { running.stop() }
        let second = try ChildProcess(Binaries.daemon, ["--config", running.config], log: running.dir.path("second.log"))
        // Blocking waits on this thread: the daemon's own exit is measured, not how long this test's task waits for
        // the shared cooperative pool on a loaded machine (10.3 s once in CI, for a daemon that exits at once).
        #expect(second.waitForBlocking(5) { $0.contains("in use by another bunq-sessiond") },
                "the second daemon says why: \(second.log)")
        let deadline = Date().addingTimeInterval(5)
        while second.process.isRunning, Date() < deadline { usleep(20_000) }
        #expect(!second.process.isRunning, "it exits by itself, within 5 s")
        #expect(second.stop() != 0, "and exits non-zero")
        #expect(second.log.contains("(pid \(running.daemon.process.processIdentifier))"), "naming the holder: \(second.log)")
        // The first daemon still serves on its own socket.
        let status = result(try RawSocketClient(running.socket).call(#"{"jsonrpc":"2.0","id":1,"method":"daemon.status"}"#))
        #expect((status?["contexts"] as? [String: Any])?["live"] as? Int == 1)

        // The first stopped, its master key deleted: the next start refuses, names the file, makes no key.
        #expect(running.daemon.stop() == 0)
        let keyPath = running.dir.path("state") + "/master.key"
        try FileManager.default.removeItem(atPath: keyPath)
        let keyless = try ChildProcess(Binaries.daemon, ["--config", running.config], log: running.dir.path("keyless.log"))
        #expect(await keyless.waitFor(.seconds(5)) { $0.contains("master key \(keyPath) is missing") }, "\(keyless.log)")
        #expect(keyless.stop() != 0)
        #expect(!FileManager.default.fileExists(atPath: keyPath), "no new key beside the old state")
    }
}
