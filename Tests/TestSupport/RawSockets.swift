import Foundation

/// Client sockets at the system-call level, for tests and the bench that need what a library would hide:
/// connections opened without waiting for anything, and how the server side ended them.
public enum RawSockets {
    /// A TCP connection to 127.0.0.1:`port` (TCP_NODELAY); nil when refused.
    public static func tcp(_ port: Int) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(fd)
            return nil
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }

    /// A connection to the Unix socket at `path`; nil when refused.
    public static func unix(_ path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in path.utf8.prefix(buffer.count - 1).enumerated() { buffer[index] = byte }
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// Whether the connection on `fd` was ended by its server (end of file or a reset) within `timeout`.
    /// Blocks the calling thread (a test's own thread).
    public static func endedByServer(_ fd: Int32, within timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 4_096)
        while ContinuousClock.now < deadline {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = Int32(max(1, (deadline - ContinuousClock.now) / .milliseconds(1)))
            guard poll(&poller, 1, left) > 0 else { continue }
            let count = read(fd, &buffer, buffer.count)
            if count == 0 || (count < 0 && errno == ECONNRESET) { return true }
            if count < 0 && errno != EINTR && errno != EAGAIN { return true }
        }
        return false
    }

    /// Waits for the server to end each connection, closes them all, and says how many it left open.
    public static func leftOpen(_ descriptors: [Int32?], within timeout: Duration = .seconds(10)) -> Int {
        var open = 0
        for fd in descriptors.compactMap({ $0 }) {
            if !endedByServer(fd, within: timeout) { open += 1 }
            close(fd)
        }
        return open
    }
}
