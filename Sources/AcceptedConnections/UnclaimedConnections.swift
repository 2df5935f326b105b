import NIOCore
import Synchronization

/// Connections a server has accepted that its serving loop has not taken yet.
///
/// Why it exists: a server bound with an `NIOAsyncChannel` initializer hands each accepted connection to its
/// loop through an async sequence. When the loop's task is cancelled, that sequence ends at once and drops the
/// connections still buffered in it; an `NIOAsyncChannel` dropped without `executeThenClose` traps ("Deinited
/// NIOAsyncWriter without calling finish()", swift-nio issue 2637). So every connection is held here from its
/// initializer until the loop claims it; when the loop ends, `close()` hands over the ones it never saw, to be
/// served in the (cancelled) connection group like any other — which closes them — and closes any connection
/// whose initializer runs later, making nothing for it.
public final class UnclaimedConnections<Connection: Sendable>: Sendable {
    private struct State {
        var open = true
        var held: [ObjectIdentifier: Connection] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    /// Makes the connection for `channel` with `make` (in the server's child initializer, on the channel's event
    /// loop) and holds it until the loop claims it. Once the loop has ended it makes nothing, closes the channel
    /// and returns nil: the initializer must then hand the loop something that needs no closing.
    ///
    /// Also closes the channel when `make` throws: NIO leaves a child channel whose initializer failed open
    /// (the server's async channel "must be handled in the transformation futures themselves").
    public func make(for channel: any Channel, _ make: () throws -> Connection) throws -> Connection? {
        do {
            let made = try state.withLock { state -> Connection? in
                guard state.open else { return nil }
                let connection = try make()
                state.held[ObjectIdentifier(channel)] = connection
                return connection
            }
            if made == nil { channel.close(promise: nil) }
            return made
        } catch {
            channel.close(promise: nil)
            throw error
        }
    }

    /// The loop took the connection of `channel`.
    public func claim(_ channel: any Channel) {
        _ = state.withLock { $0.held.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    /// The loop ended: the connections it never took, and from now on every new one is refused.
    public func close() -> [Connection] {
        state.withLock { state in
            state.open = false
            defer { state.held = [:] }
            return Array(state.held.values)
        }
    }
}
