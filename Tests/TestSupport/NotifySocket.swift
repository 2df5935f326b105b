import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A datagram socket standing in for systemd's notification socket (`$NOTIFY_SOCKET`): tests bind one, point a
/// process at it and read what it announces.
public final class NotifySocket: Sendable {
    public let path: String
    private let fd: Int32

    /// `fd` is set only once the socket is bound: an initializer that throws after setting every stored property
    /// runs `deinit`, which would close it a second time.
    public init() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("notify-\(UUID().uuidString)").path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw Failure("socket(AF_UNIX, SOCK_DGRAM) failed: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: Array(path.utf8) + [0])
        }
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else {
            let reason = errno
            close(fd)
            throw Failure("bind(\(path)) failed: errno \(reason)")
        }
        self.path = path
        self.fd = fd
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// The next message, waiting up to `timeout` seconds (0: only what is already queued); nil when none came.
    public func next(timeout: Double = 0) -> String? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(timeout * 1_000)) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4_096)
        let received = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        return received < 0 ? nil : String(decoding: buffer.prefix(received), as: UTF8.self)
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }
}
