import AcceptedConnections
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The one listener of every Unix socket the daemon serves (the JSON-RPC socket, the bunq API proxy, a metrics
/// endpoint on a Unix socket): it binds the path (or takes the socket systemd passed, `LISTEN_FDS`), sets the
/// socket's mode, reads each caller's credentials from the kernel (`SO_PEERCRED`) before anything else, admits
/// connections by uid and in all (admins have a reserve beyond the total), pauses accepting with a backoff when
/// descriptors run out (EMFILE, ENFILE) instead of spinning, holds back and then closes a caller that does not
/// read what it is sent, and runs one child task per connection in a discarding task group until shutdown. The
/// protocols sit on top: `initialize` sets up a connection's pipeline, `serve` runs it.
public final class UnixListener: Sendable {
    public struct Settings: Sendable {
        /// The socket's path (also when inherited: for messages and the directory rules).
        public var path: String
        /// A listening socket systemd passed (socket activation); nil: bind `path`.
        public var inheritedSocket: Int32?
        /// What the socket is, for messages ("socket", "proxy.socket", "metrics.listen").
        public var name: String
        /// The mode of a socket bound here (systemd sets an inherited one's from the `.socket` unit).
        public var mode: mode_t = 0o660
        public var backlog: Int32 = 256
        public var maxConnections: Int
        public var maxConnectionsPerUID: Int
        /// Connections admins may open beyond `maxConnections`: whoever fills the socket, root gets in.
        public var adminReserve = 16
        /// Time a connection may leave what it is sent unread (its unsent output above the write buffer's
        /// high-water mark) before it is closed; nil: no such rule (the protocol bounds its own output).
        public var sendTimeout: Duration?
        /// Unsent output per connection above which it is not read (`sendTimeout` runs meanwhile).
        public var writeBufferHighWater = 64 * 1_024

        public init(path: String, inheritedSocket: Int32? = nil, name: String, maxConnections: Int,
                    maxConnectionsPerUID: Int, sendTimeout: Duration? = .seconds(30)) {
            self.path = path
            self.inheritedSocket = inheritedSocket
            self.name = name
            self.maxConnections = maxConnections
            self.maxConnectionsPerUID = maxConnectionsPerUID
            self.sendTimeout = sendTimeout
        }
    }

    /// What a connection's initializer produced: a connection to serve, or one refused by the limits (answered
    /// by `reject`'s handler and closed).
    enum Admitted<Connection: Sendable>: Sendable {
        case connection(Connection, PeerCredentials, any Channel)
        case rejected
    }

    public let settings: Settings
    let logger: Logger
    private let connections = Atomic<Int>(0)
    /// Connections held per uid (entries removed at zero).
    private let perUID = Mutex<[UInt32: Int]>([:])

    public init(settings: Settings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    public var connectionCount: Int { connections.load(ordering: .relaxed) }

    /// Listens and serves until shutdown (graceful or by cancellation), which closes the listening socket; the
    /// connections' tasks are then cancelled. A socket bound here is removed at the end (unless another process
    /// bound the path since); an inherited one belongs to systemd, which keeps listening on it.
    ///
    /// - `childOptions`: the protocol's channel options (receive allocator, half-closure, …).
    /// - `isAdmin`: whether a caller may use the admins' reserve and is exempt from the per-uid bound.
    /// - `initialize`: on the connection's event loop, after admission, behind the write-stall handler.
    /// - `reject`: adds the handler that answers a refused connection ("too many connections") and closes it.
    /// - `onBound`: called once the socket accepts connections.
    /// - `serve`: runs one connection, in its own child task.
    public func run<Connection: Sendable>(
        childOptions: @Sendable (ServerBootstrap) -> ServerBootstrap = { $0 },
        isAdmin: @escaping @Sendable (PeerCredentials) -> Bool,
        initialize: @escaping @Sendable (any Channel, PeerCredentials) throws -> Connection,
        reject: @escaping @Sendable (any Channel) throws -> Void,
        onBound: @Sendable () -> Void = {},
        serve: @escaping @Sendable (Connection, PeerCredentials) async -> Void
    ) async throws {
        let settings = settings, logger = logger
        let bootstrap = childOptions(ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: settings.backlog)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(name: settings.name, logger: logger))
                }
            }
            .childChannelOption(.writeBufferWaterMark, value: .init(low: settings.writeBufferHighWater / 4,
                                                                    high: settings.writeBufferHighWater)))
        // Held from their initializer until the loop takes them: a connection the loop never takes (it was
        // cancelled) is still served — in the cancelled group, which closes it — instead of dropped.
        let unclaimed = UnclaimedConnections<(Connection, PeerCredentials)>()
        let accept: @Sendable (any Channel) -> EventLoopFuture<Admitted<Connection>> = { [self] channel in
            PeerCredentials.read(channel).flatMapThrowing { peer in
                guard self.admit(peer, admin: isAdmin(peer)) else {
                    try reject(channel)
                    return .rejected
                }
                do {
                    if let sendTimeout = settings.sendTimeout {
                        try channel.pipeline.syncOperations.addHandler(
                            WriteStallHandler(sendTimeout: Self.amount(sendTimeout), peer: peer, logger: logger))
                    }
                    guard let made = try unclaimed.make(for: channel, { (try initialize(channel, peer), peer) }) else {
                        // The loop has ended: the channel is closed, nothing was made for it.
                        self.release(peer)
                        return .rejected
                    }
                    return .connection(made.0, peer, channel)
                } catch {
                    self.release(peer)
                    throw error
                }
            }.recover { _ in
                // A connection that could not be set up is closed here: NIO leaves a child whose initializer
                // failed open, and a failure must not reach the listening socket's own stream.
                channel.close(promise: nil)
                return .rejected
            }
        }
        let server: NIOAsyncChannel<Admitted<Connection>, Never>
        var boundInode: ino_t?
        do {
            if let inherited = settings.inheritedSocket {
                server = try await bootstrap.bind(inherited) { channel in accept(channel) }
                logger.info("listening on the socket systemd passed", metadata: ["bunq.socket": "\(settings.path)"])
            } else {
                try Self.prepare(settings.path)
                server = try await bootstrap.bind(unixDomainSocketPath: settings.path, cleanupExistingSocketFile: true) { channel in
                    accept(channel)
                }
                boundInode = Self.inode(settings.path)
                chmod(settings.path, settings.mode)
                logger.info("listening", metadata: ["bunq.socket": "\(settings.path)"])
            }
        } catch let error as UnixListenerError {
            throw error
        } catch {
            throw UnixListenerError("\(settings.name) \(settings.path): \(error)")
        }
        onBound()
        defer {
            if settings.inheritedSocket == nil, let boundInode, Self.inode(settings.path) == boundInode { unlink(settings.path) }
        }
        let channel = server.channel
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await server.executeThenClose { accepted in
                    await withDiscardingTaskGroup { group in
                        do {
                            for try await connection in accepted {
                                guard case .connection(let connection, let peer, let child) = connection else { continue }
                                unclaimed.claim(child)
                                group.addTask { [self] in
                                    await serve(connection, peer)
                                    release(peer)
                                }
                            }
                        } catch is CancellationError {
                            // Stopped by cancellation rather than a graceful shutdown: nothing failed.
                        } catch {
                            logger.warning("the listening socket failed", metadata: ["bunq.socket": "\(settings.path)",
                                                                                      "error": "\(error)"])
                        }
                        group.cancelAll()
                        for (connection, peer) in unclaimed.close() {
                            group.addTask { [self] in
                                await serve(connection, peer)
                                release(peer)
                            }
                        }
                    }
                }
            } onGracefulShutdown: {
                channel.close(promise: nil)
            }
        } onCancel: {
            channel.close(promise: nil)
        }
    }

    public static func amount(_ duration: Duration) -> TimeAmount { .milliseconds(Int64(duration / .milliseconds(1))) }

    // MARK: Admission

    /// Counts the connection in, if the limits allow it: at most `maxConnectionsPerUID` per uid (admins exempt),
    /// `maxConnections` in all and admins `adminReserve` beyond that.
    private func admit(_ peer: PeerCredentials, admin: Bool) -> Bool {
        let total = connections.wrappingAdd(1, ordering: .relaxed).newValue
        let allowed = total <= settings.maxConnections + (admin ? settings.adminReserve : 0)
            && perUID.withLock { counts in
                guard admin || counts[peer.uid, default: 0] < settings.maxConnectionsPerUID else { return false }
                counts[peer.uid, default: 0] += 1
                return true
            }
        if !allowed { _ = connections.wrappingSubtract(1, ordering: .relaxed) }
        return allowed
    }

    /// Counts a connection out.
    private func release(_ peer: PeerCredentials) {
        _ = connections.wrappingSubtract(1, ordering: .relaxed)
        perUID.withLock { counts in
            guard let count = counts[peer.uid] else { return }
            counts[peer.uid] = count > 1 ? count - 1 : nil
        }
    }

    // MARK: The socket's file

    /// The socket's directory must exist (it is created 0755 if missing) and must not let others replace the
    /// socket: not writable by others unless sticky. An existing file must be a socket nobody listens on (a stale
    /// one left by a crash).
    public static func prepare(_ path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        if !FileManager.default.fileExists(atPath: directory) {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
        }
        var info = stat()
        guard stat(directory, &info) == 0 else { throw UnixListenerError("cannot stat the socket directory \(directory)") }
        if info.st_mode & 0o002 != 0, info.st_mode & 0o1000 == 0 {
            throw UnixListenerError("the socket directory \(directory) is writable by everyone; use a private directory")
        }
        var existing = stat()
        if lstat(path, &existing) == 0, existing.st_mode & S_IFMT != S_IFSOCK {
            throw UnixListenerError("\(path) exists and is not a socket; refusing to replace it")
        }
        if lstat(path, &existing) == 0, Self.isListening(path) {
            throw UnixListenerError("\(path) is in use: another process listens on it; refusing to replace it")
        }
    }

    /// Whether something accepts connections on the Unix socket at `path` (a stale file left by a crash does not).
    static func isListening(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: bytes)
        }
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }

    /// The inode of the file at `path`, or nil.
    public static func inode(_ path: String) -> ino_t? {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_ino : nil
    }
}

/// A listener that cannot listen: the path, and why.
public struct UnixListenerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
