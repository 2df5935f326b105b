import BunqSandbox
import Foundation
import Synchronization
import Testing
import TestSupport
import TestThreads

/// Cancelling the emulator's HTTP server while clients connect: a connection accepted but not yet taken by the
/// serving loop is closed, never dropped (swift-nio traps on an `NIOAsyncChannel` dropped unclosed, which took
/// the whole test process down once, at the end of a test that stopped its server under load).
@Suite(.ownThread) struct ServerShutdownTests {
    /// Opens a TCP connection to 127.0.0.1:`port` without waiting for anything; -1 if refused.
    static func connect(_ port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if result != 0 {
            close(fd)
            return -1
        }
        return fd
    }

    /// What one server run saw.
    final class Run: Sendable {
        let port = Mutex<Int?>(nil)
    }

    @Test func cancellingTheServerWhileClientsConnectClosesEveryConnection() async throws {
        var open = 0
        for _ in 0..<40 {
            let run = Run()
            await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await HTTPServerCore.serve(host: "127.0.0.1", port: 0, handler: { _ in nil },
                                                   onBound: { port in run.port.withLock { $0 = port } })
                }
                var port: Int?
                while port == nil {
                    port = run.port.withLock { $0 }
                    await Task.yield()
                }
                // Connections arriving as the server is cancelled: some are taken, some still in NIO's buffer.
                let descriptors = (0..<16).map { _ in Self.connect(port!) }
                group.cancelAll()
                try? await group.waitForAll()
                // Every connection was ended by the server side, taken or not.
                for fd in descriptors where fd >= 0 {
                    if !ClientEnd.endedByServer(fd, within: .seconds(10)) { open += 1 }
                    close(fd)
                }
            }
            if open > 0 { break }
        }
        // The process is still here (a dropped connection traps it), and no connection was left open.
        #expect(open == 0)
    }
}
