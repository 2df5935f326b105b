import Foundation
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A bare Unix-socket client that sends exact bytes and reads lines: protocol tests must not rely on our own
/// client library's behaviour.
final class RawSocketClient {
    let fd: Int32
    private var buffer: [UInt8] = []

    /// The descriptor is this object's only once it connected: a class whose initializer throws after every
    /// stored property is set is deinitialized, so closing it here too would close it twice, and the second close
    /// could hit a descriptor another thread (an event loop) has opened under the same number meanwhile.
    init(_ path: String) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw HarnessError("connect \(path): \(reason)")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if written <= 0 { return }
            offset += written
        }
    }

    func send(_ line: String) { send(Array((line + "\n").utf8)) }

    /// The next line, or nil on close or after `timeout` seconds.
    func readLine(timeout: Double = 10) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return line
            }
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { return nil }
            var pollFD = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pollFD, 1, Int32(remaining * 1000)) > 0 else { return nil }
            var chunk = [UInt8](repeating: 0, count: 65_536)
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { return nil }
            buffer.append(contentsOf: chunk.prefix(count))
        }
    }

    /// Sends a request and returns the decoded response object.
    func call(_ line: String) -> [String: Any] {
        send(line)
        guard let reply = readLine(), let object = try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any]
        else { return [:] }
        return object
    }

    /// Whether the peer closed the connection (within `timeout`): end of stream, or reset (a Unix socket closed
    /// with our unread bytes still queued on its side reads as ECONNRESET here, not as end of stream).
    func isClosed(timeout: Double = 5) -> Bool {
        var pollFD = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pollFD, 1, Int32(timeout * 1000)) > 0 else { return false }
        var byte: UInt8 = 0
        let count = recv(fd, &byte, 1, Int32(MSG_PEEK))
        return count == 0 || (count < 0 && errno == ECONNRESET)
    }
}

func errorCode(_ response: [String: Any]) -> Int? { (response["error"] as? [String: Any])?["code"] as? Int }
func result(_ response: [String: Any]) -> [String: Any]? { response["result"] as? [String: Any] }

/// A sandbox and a daemon (provider and `ops`), ready, for socket tests.
struct RunningDaemon {
    let dir: TemporaryDirectory
    let sandbox: Sandbox
    let daemon: ChildProcess
    let config: String
    let apiKey: String
    var socket: String { dir.path("socket") }

    /// `access` is extra configuration appended to the file; with `socketInConfig` it may carry its own `socket:`
    /// section (the default one is then left out). `wrapper` runs the daemon through a command that execs it (e.g.
    /// `prlimit --nofile=…`).
    static func start(sessionTimeout: Int = 600, access: String = "", provider: Bool = true,
                      socketInConfig: Bool = false, limits: Limits = .scaled(0.1),
                      wrapper: [String] = []) async throws -> RunningDaemon {
        let dir = try TemporaryDirectory()
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "\(sessionTimeout)",
                                                        "--psd2-first-session-timeout", "\(sessionTimeout)"],
                                              limits: limits)
        let apiKey = try sandbox.newAPIKey()
        // "DIR/" in the extra configuration is the test's directory (e.g. a proxy socket's path).
        let access = access.replacingOccurrences(of: "DIR/", with: dir.url.path + "/")
        let extra = socketInConfig
            ? access.replacingOccurrences(of: "socket: {", with: "socket: {path: \(dir.path("socket")), ") : access
        var config = try writeConfig(dir, sandbox: sandbox, apiKey: apiKey, provider: provider,
                                     firstSession: sessionTimeout, extra: extra)
        if socketInConfig {
            // Drop writeConfig's own socket section: the extra configuration carries one.
            let text = try String(contentsOfFile: config, encoding: .utf8)
                .replacingOccurrences(of: "socket:\n  path: \(dir.path("socket"))\n", with: "")
            config = try dir.write("config.yaml", text)
        }
        let command = wrapper + [Binaries.daemon, "--config", config]
        let daemon = try ChildProcess(command[0], Array(command.dropFirst()), log: dir.path("daemon.log"))
        guard await daemon.waitFor(.seconds(60), { $0.contains("[bunq_sessiond] ready") }) else {
            _ = daemon.stop()
            _ = sandbox.child.stop()
            throw HarnessError("the daemon did not get ready: \(daemon.log)")
        }
        // Every identity live before the test begins.
        for _ in 0..<100 {
            let client = try RawSocketClient(dir.path("socket"))
            let status = result(client.call(#"{"jsonrpc":"2.0","id":1,"method":"daemon.status"}"#))
            if (status?["contexts"] as? [String: Any])?["live"] as? Int == (provider ? 2 : 1) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        return RunningDaemon(dir: dir, sandbox: sandbox, daemon: daemon, config: config, apiKey: apiKey)
    }

    func stop() {
        _ = daemon.stop()
        _ = sandbox.child.stop()
        dir.remove()
    }
}
