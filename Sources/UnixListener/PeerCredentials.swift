import Foundation
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The process on the other end of a connection, from the kernel at connect time: `SO_PEERCRED` (pid, uid, gid)
/// and `SO_PEERGROUPS` (its supplementary groups as the process held them, Linux ≥ 4.13): the kernel's word, not
/// the client's, and not the user database's (a process that dropped a group has dropped it; one given a group by
/// systemd's `SupplementaryGroups=` or `setpriv --groups` has it).
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    public let pid: Int32
    public let uid: UInt32
    public let gid: UInt32
    /// Supplementary groups; nil when the kernel could not say (then only the primary group counts).
    public let groups: [UInt32]?

    public init(pid: Int32, uid: UInt32, gid: UInt32, groups: [UInt32]? = nil) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }

    /// The kernel's credentials of the process on the other end of `channel` (a Unix socket connection).
    public static func read(_ channel: any Channel) -> EventLoopFuture<PeerCredentials> {
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
        }
        let credentials: EventLoopFuture<UCred> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        let groups: EventLoopFuture<GroupList> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERGROUPS))
        return credentials.and(groups.map { Optional($0) }.recover { _ in nil }).map { credentials, groups in
            PeerCredentials(pid: credentials.pid, uid: credentials.uid, gid: credentials.gid, groups: groups?.gids)
        }
    }

    /// `struct ucred` (socket(7)), which Glibc exposes only under _GNU_SOURCE: same layout.
    struct UCred: Sendable {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }

    /// Room for `SO_PEERGROUPS`' answer: 64 groups (a process in more is refused the option, ERANGE, and then
    /// only its primary group counts). SwiftNIO zero-fills the buffer and does not return the length; the kernel
    /// keeps a process's groups sorted, so a group 0 can only come first and trailing zeros are the unused room
    /// (a process whose only supplementary group is 0 is read as having none: its primary group still counts).
    struct GroupList: Sendable {
        var storage: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                      UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                      UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

        var gids: [UInt32] {
            var gids = withUnsafeBytes(of: storage) { Array($0.bindMemory(to: UInt32.self)) }
            while gids.last == 0 { gids.removeLast() }
            return gids
        }
    }

    /// The systemd unit the process runs in, from `/proc/PID/cgroup`, when readable.
    public var unit: String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8) else { return nil }
        let path = text.split(separator: "\n").first { $0.hasPrefix("0::") }?.dropFirst(3) ?? ""
        return path.split(separator: "/").last { $0.hasSuffix(".service") || $0.hasSuffix(".scope") }.map(String.init)
    }
}
