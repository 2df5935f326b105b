import Metrics
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SessionKeeper
import SessionProtocol
import Synchronization

/// The Unix-socket JSON-RPC server: newline-delimited JSON-RPC 2.0 on `path` (mode 0660), callers identified by
/// `SO_PEERCRED`, fair bounds on connections (per uid, in all, a reserve for admins), idle and slow connections
/// closed, and clients that do not read held back and then disconnected.
public final class SocketServer: Service, Sendable {
    public struct Limits: Sendable {
        /// Connections admins may open beyond `maxConnections`: whoever fills the socket, root gets in.
        public static let adminReserve = 16
        public var maxConnections = 4_096
        public var maxConnectionsPerUID = 64
        /// Time without a complete request after which a connection (not subscribed, nothing outstanding) is closed.
        public var idleTimeout: Duration = .seconds(300)
        /// Time a request may take from its first byte to its newline.
        public var requestTimeout: Duration = .seconds(10)
        /// Time a connection may leave what it is sent unread (its unsent output above the high-water mark)
        /// before it is closed.
        public var sendTimeout: Duration = .seconds(30)
        /// Unsent output per connection above which it is not read (and its send timeout runs).
        public static let writeBufferHighWater = 64 * 1_024
        public init() {}
    }

    public let path: String
    /// A listening socket inherited from systemd (socket activation); nil: bind `path` ourselves.
    public let inheritedSocket: Int32?
    let service: SocketService
    let limits: Limits
    let logger: Logger
    private let connections = Atomic<Int>(0)
    /// Connections held per uid (entries removed at zero).
    private let perUID = Mutex<[UInt32: Int]>([:])
    /// Fires once the socket accepts connections.
    public let listening = OneShotSignal()
    let memory: ConnectionMemory

    /// `releaseFreeMemory` asks the allocator to return freed memory to the system (glibc's `malloc_trim`); it is
    /// called, off the event loops, after connections that held a lot of memory have gone.
    public init(path: String, inheritedSocket: Int32? = nil, service: SocketService, limits: Limits = Limits(),
                logger: Logger, releaseFreeMemory: @escaping @Sendable () -> Void = {}) {
        memory = ConnectionMemory(release: releaseFreeMemory)
        self.path = path
        self.inheritedSocket = inheritedSocket
        self.service = service
        self.limits = limits
        self.logger = logger
    }

    public var connectionCount: Int { connections.load(ordering: .relaxed) }

    /// What the child channel initializer hands the accept loop.
    enum Accepted: Sendable {
        case connection(NIOAsyncChannel<SlowRequest, ByteBuffer>, PeerCredentials, ConnectionFlags)
        /// Over the limit: answered and closed by its handler; nothing more to do.
        case rejected
    }

    public func run() async throws {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelInitializer { [logger] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(logger: logger))
                }
            }
            // A client that half-closes (`echo … | socat`) still gets every answer.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            // Reads of at most 16 KiB: a connection's receive buffer (kept between reads) stays small, and a long
            // partial line lives in the framer's buffer alone rather than in a 64 KiB read buffer as well.
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 1_024,
                                                                                       maximum: 16 * 1_024))
            .childChannelOption(.writeBufferWaterMark, value: .init(low: Limits.writeBufferHighWater / 4,
                                                                    high: Limits.writeBufferHighWater))
        let server: NIOAsyncChannel<Accepted, Never>
        var boundInode: ino_t?
        do {
            if let inheritedSocket {
                // systemd made the socket (its mode, owner and group come from the .socket unit).
                server = try await bootstrap.bind(inheritedSocket) { [self] channel in initialize(channel) }
                logger.info("listening on the socket systemd passed", metadata: ["bunq.socket": "\(path)"])
            } else {
                try Self.prepare(path)
                server = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { [self] channel in
                    initialize(channel)
                }
                boundInode = Self.inode(path)
                chmod(path, 0o660)
                logger.info("listening", metadata: ["bunq.socket": "\(path)"])
            }
        } catch {
            listening.fail()
            throw error
        }
        listening.fire()
        // An inherited socket belongs to systemd, which keeps listening on it for the next start; and a socket
        // file that is no longer ours (another process bound the path since) is not ours to remove.
        defer { if inheritedSocket == nil, let boundInode, Self.inode(path) == boundInode { unlink(path) } }
        let channel = server.channel
        // Shutdown (graceful or by cancellation) closes the listening socket; the accept loop then ends and the
        // connections' tasks are cancelled.
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await server.executeThenClose { accepted in
                    await withDiscardingTaskGroup { group in
                        group.addTask { [memory] in await memory.run() }
                        do {
                            for try await connection in accepted {
                                guard case .connection(let channel, let peer, let flags) = connection else { continue }
                                group.addTask { [self] in
                                    await Connection(channel: channel, peer: peer, flags: flags, service: service).run()
                                    release(peer)
                                    memory.connectionEnded()
                                }
                            }
                        } catch {
                            logger.warning("the listening socket failed", metadata: ["error": "\(error)"])
                        }
                        group.cancelAll()
                    }
                }
            } onGracefulShutdown: {
                channel.close(promise: nil)
            }
        } onCancel: {
            channel.close(promise: nil)
        }
    }

    /// Whether an event loop of the server runs tasks within `timeout`: the watchdog's proof that the server is
    /// not wedged.
    public func probe(timeout: Duration = .seconds(2)) async -> Bool {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask { (try? await loop.submit { true }.get()) ?? false }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// Admits a connection by who is calling: at most `maxConnectionsPerUID` per uid, `maxConnections` in all, and
    /// admins `adminReserve` beyond that. A refused one is answered "Too many connections" and closed; the
    /// credentials are the kernel's, read before anything else.
    private func initialize(_ channel: any Channel) -> EventLoopFuture<Accepted> {
        PeerCredentials.read(channel).flatMapThrowing { [self] peer in
            guard admit(peer) else {
                try channel.pipeline.syncOperations.addHandler(RejectHandler())
                return .rejected
            }
            let flags = ConnectionFlags()
            do {
                let timeouts = ConnectionTimeouts(idle: Self.amount(limits.idleTimeout),
                                                  request: Self.amount(limits.requestTimeout))
                try channel.pipeline.syncOperations.addHandlers([
                    WriteStallHandler(sendTimeout: Self.amount(limits.sendTimeout), peer: peer, logger: logger),
                    LineFramer(timeouts: timeouts, flags: flags, memory: memory, peer: peer, logger: logger),
                    FastPathHandler(service: service, peer: peer, flags: flags),
                ])
                // Outbound half-closure: the connection's last answers are flushed before it closes.
                let wrapped = try NIOAsyncChannel<SlowRequest, ByteBuffer>(
                    wrappingChannelSynchronously: channel,
                    configuration: .init(isOutboundHalfClosureEnabled: true))
                return .connection(wrapped, peer, flags)
            } catch {
                release(peer)
                throw error
            }
        }
    }

    static func amount(_ duration: Duration) -> TimeAmount { .milliseconds(Int64(duration / .milliseconds(1))) }

    /// Counts the connection in, if the limits allow it.
    private func admit(_ peer: PeerCredentials) -> Bool {
        let total = connections.wrappingAdd(1, ordering: .relaxed).newValue
        let admin = service.access.isAdmin(peer)
        let allowed = total <= limits.maxConnections + (admin ? Limits.adminReserve : 0)
            && perUID.withLock { counts in
                guard admin || counts[peer.uid, default: 0] < limits.maxConnectionsPerUID else { return false }
                counts[peer.uid, default: 0] += 1
                return true
            }
        if !allowed { _ = connections.wrappingSubtract(1, ordering: .relaxed) } else { service.metrics.connections.increment() }
        return allowed
    }

    /// Counts a connection out.
    func release(_ peer: PeerCredentials) {
        _ = connections.wrappingSubtract(1, ordering: .relaxed)
        service.metrics.connections.decrement()
        perUID.withLock { counts in
            guard let count = counts[peer.uid] else { return }
            counts[peer.uid] = count > 1 ? count - 1 : nil
        }
    }

    /// The socket's directory must exist (it is created 0755 if missing) and must not let others replace the
    /// socket: not writable by others unless sticky.
    public static func prepare(_ path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        if !FileManager.default.fileExists(atPath: directory) {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
        }
        var info = stat()
        guard stat(directory, &info) == 0 else { throw SocketServerError("cannot stat the socket directory \(directory)") }
        if info.st_mode & 0o002 != 0, info.st_mode & 0o1000 == 0 {
            throw SocketServerError("the socket directory \(directory) is writable by everyone; use a private directory")
        }
        var existing = stat()
        if lstat(path, &existing) == 0, existing.st_mode & S_IFMT != S_IFSOCK {
            throw SocketServerError("\(path) exists and is not a socket; refusing to replace it")
        }
        if lstat(path, &existing) == 0, Self.isListening(path) {
            throw SocketServerError("\(path) is in use: another process listens on it; refusing to replace it")
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

public struct SocketServerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
