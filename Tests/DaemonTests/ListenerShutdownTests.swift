import Foundation
import Logging
import NIOCore
import Synchronization
import Testing
import TestSupport
import TestThreads
import UnixListener

/// Cancelling the listener of every Unix socket while clients connect: a connection accepted but not yet taken
/// by the serving loop is still served in the cancelled group (which closes it), never dropped — swift-nio traps
/// on an `NIOAsyncChannel` dropped unclosed, so a daemon stopped under load would crash instead of exiting.
@Suite(.ownThread) struct ListenerShutdownTests {
    /// What one listener run saw.
    final class Run: Sendable {
        let bound = Mutex(false)
    }

    @Test func cancellingTheListenerWhileClientsConnectClosesEveryConnection() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        var open = 0
        for attempt in 0..<40 {
            let path = dir.path("s\(attempt).sock")
            let listener = UnixListener(settings: .init(path: path, name: "socket", maxConnections: 1_000,
                                                        maxConnectionsPerUID: 1_000),
                                        logger: Logger(label: "test"))
            let run = Run()
            await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await listener.run(
                        isAdmin: { _ in false },
                        initialize: { channel, _ in try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) },
                        reject: { channel in channel.close(promise: nil) },
                        onBound: { run.bound.withLock { $0 = true } },
                        serve: { connection, _ in
                            try? await connection.executeThenClose { inbound, _ in for try await _ in inbound {} }
                        })
                }
                while !run.bound.withLock({ $0 }) { await Task.yield() }
                // Connections arriving as the listener is cancelled: some are taken, some still in NIO's buffer.
                let descriptors = (0..<16).map { _ in RawSockets.unix(path) }
                group.cancelAll()
                try? await group.waitForAll()
                // Every connection was ended by the listener's side, taken or not.
                open += RawSockets.leftOpen(descriptors)
            }
            if open > 0 { break }
        }
        // The process is still here (a dropped connection traps it), and no connection was left open.
        #expect(open == 0)
    }
}
