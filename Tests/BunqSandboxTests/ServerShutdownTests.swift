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
                let descriptors = (0..<16).map { _ in RawSockets.tcp(port!) }
                group.cancelAll()
                try? await group.waitForAll()
                // Every connection was ended by the server side, taken or not.
                open += RawSockets.leftOpen(descriptors)
            }
            if open > 0 { break }
        }
        // The process is still here (a dropped connection traps it), and no connection was left open.
        #expect(open == 0)
    }
}
