import Foundation
import SystemdSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized) struct ServiceManagerTests {
    /// A datagram socket standing in for systemd's notification socket.
    @Test func notifyDeliversTheStateToNotifySocket() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("notify-\(UUID().uuidString)").path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(fd >= 0)
        defer {
            close(fd)
            unlink(path)
        }
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
        #expect(bound == 0)

        // No other test reads NOTIFY_SOCKET; it is restored before returning.
        let previous = getenv("NOTIFY_SOCKET").map { String(cString: $0) }
        setenv("NOTIFY_SOCKET", path, 1)
        defer {
            if let previous { setenv("NOTIFY_SOCKET", previous, 1) } else { unsetenv("NOTIFY_SOCKET") }
        }
        #expect(ServiceManager.notify("READY=1\nSTATUS=3 live, 0 failing"))

        var buffer = [UInt8](repeating: 0, count: 512)
        let received = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        #expect(received > 0)
        #expect(String(decoding: buffer.prefix(max(0, received)), as: UTF8.self) == "READY=1\nSTATUS=3 live, 0 failing")
    }

    @Test func notifyOutsideSystemdIsANoOp() {
        guard getenv("NOTIFY_SOCKET") == nil else {
            print("SKIPPED: notifyOutsideSystemdIsANoOp: running under a service manager (NOTIFY_SOCKET is set)")
            return
        }
        #expect(ServiceManager.notify("READY=1") == false)
    }
}
