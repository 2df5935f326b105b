import Foundation
import TestThreads
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// SIGHUP re-reads the configuration without dropping connections; an invalid one is refused.
@Suite(.ownThread) struct ReloadTests {
    @Test func reloadAddsIdentitiesChangesAccessAndRefusesInvalidConfigurations() async throws {
        let running = try await RunningDaemon.start(provider: false)
        defer { running.stop() }
        let client = try RawSocketClient(running.socket)
        let names = { (client: RawSocketClient) -> [String] in
            (result(client.call(#"{"jsonrpc":"2.0","id":1,"method":"context.list"}"#))?["contexts"] as? [[String: Any]] ?? [])
                .compactMap { $0["name"] as? String }
        }
        #expect(names(client) == ["ops"])
        let original = try String(contentsOfFile: running.config, encoding: .utf8)

        // A new API-key identity appears and goes live; the open connection keeps working.
        _ = try running.dir.write("ops2.key", try running.sandbox.newAPIKey() + "\n")
        _ = try running.dir.write("config.yaml", original.replacingOccurrences(
            of: "api_keys:\n", with: "api_keys:\n  - {name: ops2, key_file: \(running.dir.path("ops2.key"))}\n"))
        kill(running.daemon.process.processIdentifier, SIGHUP)
        #expect(await running.daemon.waitFor(.seconds(20)) { $0.contains("configuration reloaded") })
        #expect(names(client) == ["ops", "ops2"])
        var live = false
        for _ in 0..<100 where !live {
            live = result(client.call(#"{"jsonrpc":"2.0","id":2,"method":"session.get","params":{"context":"ops2"}}"#)) != nil
            if !live { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(live, "the added identity is registered and live")

        // An invalid file is refused; everything keeps running as it was.
        _ = try running.dir.write("config.yaml", "bunq: {environment: moon}\n")
        kill(running.daemon.process.processIdentifier, SIGHUP)
        #expect(await running.daemon.waitFor(.seconds(20)) { $0.contains("reload refused") && $0.contains("bunq.environment") })
        #expect(names(client) == ["ops", "ops2"])

        // A changed access rule applies to connections already open: root is no longer admin or allowed.
        _ = try running.dir.write("config.yaml", original + "\naccess: {admin: {users: ['4242']}, contexts: {ops: {users: ['4242']}}}\n")
        kill(running.daemon.process.processIdentifier, SIGHUP)
        #expect(await running.daemon.waitFor(.seconds(20)) {
            $0.components(separatedBy: "configuration reloaded").count == 3
        })
        #expect(names(client).isEmpty, "root may see nothing under the new rules")
        #expect(errorCode(client.call(#"{"jsonrpc":"2.0","id":3,"method":"oauth.authorize_url"}"#)) == 1002)

        // What a reload cannot apply is named, and waits for a restart: the socket keeps its limits.
        _ = try running.dir.write("config.yaml", original.replacingOccurrences(of: "socket:\n", with: "socket:\n  max_connections: 7\n")
            + "\naccess: {admin: {users: ['4242']}, contexts: {ops: {users: ['4242']}}}\ndevice_description: renamed\n")
        kill(running.daemon.process.processIdentifier, SIGHUP)
        #expect(await running.daemon.waitFor(.seconds(20)) {
            $0.contains("take effect at the next restart") && $0.contains("device_description,socket")
        })
        #expect(names(client).isEmpty, "the access rules stay applied")
        #expect(running.daemon.process.isRunning)
    }
}
