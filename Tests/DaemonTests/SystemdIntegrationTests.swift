import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A datagram socket standing in for systemd's notification socket.
final class NotifySocket {
    let path: String
    let fd: Int32

    init(_ path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw HarnessError("bind \(path)") }
    }

    deinit { close(fd) }

    /// Messages received within `timeout`, until `until` matches one (or the time is up).
    func receive(timeout: Double, until: (String) -> Bool = { _ in false }) -> [String] {
        var messages: [String] = []
        let deadline = Date().addingTimeInterval(timeout)
        while deadline.timeIntervalSinceNow > 0 {
            var pollFD = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pollFD, 1, Int32(max(1, deadline.timeIntervalSinceNow * 1000))) > 0 else { break }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { break }
            let message = String(decoding: buffer.prefix(count), as: UTF8.self)
            messages.append(message)
            if until(message) { break }
        }
        return messages
    }
}

/// The daemon's systemd integration without systemd as PID 1: sd_notify messages to a socket the test binds,
/// and socket activation through systemd-socket-activate.
@Suite struct SystemdIntegrationTests {
    @Test func readinessStatusWatchdogAndStopping() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, [])
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false)
        let notify = try NotifySocket(dir.path("notify"))
        let daemon = try ChildProcess("/usr/bin/env", ["NOTIFY_SOCKET=\(notify.path)", "WATCHDOG_USEC=1000000",
                                                        Binaries.daemon, "--config", config], log: dir.path("daemon.log"))
        defer { _ = daemon.stop(signal: SIGKILL) }

        let startup = notify.receive(timeout: 30) { $0.contains("READY=1") }
        let ready = try #require(startup.first { $0.contains("READY=1") }, "no READY=1: \(startup) \(daemon.log)")
        #expect(ready.contains("STATUS=") && ready.contains("live"), "READY carries the status line: \(ready)")
        #expect(FileManager.default.fileExists(atPath: dir.path("socket")), "READY only once the socket listens")

        // Pings at half of WATCHDOG_USEC while healthy...
        let healthy = notify.receive(timeout: 3).filter { $0 == "WATCHDOG=1" }
        #expect(healthy.count >= 3, "\(healthy.count) pings in 3 s")
        // ...none while the process is frozen...
        kill(daemon.process.processIdentifier, SIGSTOP)
        _ = notify.receive(timeout: 0.2)
        let frozen = notify.receive(timeout: 2).filter { $0 == "WATCHDOG=1" }
        kill(daemon.process.processIdentifier, SIGCONT)
        #expect(frozen.isEmpty, "a frozen daemon must not ping")
        #expect(notify.receive(timeout: 3).contains("WATCHDOG=1"), "pings resume")

        // STATUS stays current; STOPPING on SIGTERM.
        kill(daemon.process.processIdentifier, SIGTERM)
        let shutdown = notify.receive(timeout: 20) { $0.contains("STOPPING=1") }
        #expect(shutdown.contains("STOPPING=1"), "\(shutdown)")
        #expect(daemon.stop() == 0)
    }

    @Test func socketActivationServesOnTheInheritedSocket() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-socket-activate") else {
            print("SKIPPED: socketActivationServesOnTheInheritedSocket: systemd-socket-activate is not installed")
            return
        }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let sandbox = try await Sandbox.start(in: dir, [])
        defer { _ = sandbox.child.stop() }
        let config = try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(), provider: false)
        let socketPath = dir.path("activated.sock")
        let activator = try ChildProcess("/usr/bin/systemd-socket-activate",
                                         ["-l", socketPath, "--fdname=api", Binaries.daemon, "--config", config],
                                         log: dir.path("activate.log"))
        defer { _ = activator.stop(signal: SIGKILL) }
        try await Task.sleep(for: .milliseconds(500))
        // The first connection starts the daemon, which answers on the socket it was handed.
        var answer: [String: Any]?
        for _ in 0..<100 where answer == nil {
            if let client = try? RawSocketClient(socketPath) {
                let response = client.call(#"{"jsonrpc":"2.0","id":1,"method":"daemon.status"}"#)
                answer = result(response)
            }
            if answer == nil { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(answer?["version"] is String, "\(activator.log)")
        #expect(activator.log.contains("listening on the socket systemd passed"))
        #expect(!FileManager.default.fileExists(atPath: dir.path("socket")), "the configured path was not bound")
    }
}
