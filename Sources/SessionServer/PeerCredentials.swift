import Foundation
import NIOCore
import SessionKeeper
import Synchronization

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
    var unit: String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8) else { return nil }
        let path = text.split(separator: "\n").first { $0.hasPrefix("0::") }?.dropFirst(3) ?? ""
        return path.split(separator: "/").last { $0.hasSuffix(".service") || $0.hasSuffix(".scope") }.map(String.init)
    }
}

/// Decides, per caller, from the configured `access:` rules. Names in the rules are resolved to uids and gids
/// when the rules are set (start, reload: never on an event loop), and a caller's groups are the kernel's view of
/// its process (`SO_PEERCRED`'s gid and `SO_PEERGROUPS`): no user-database lookup per connection, no cache to go
/// stale, a group change applies to the next connection.
public final class AccessControl: Sendable {
    /// A rule's principals as numbers.
    struct Resolved: Sendable {
        var uids: Set<UInt32> = []
        var gids: Set<UInt32> = []

        init(_ principals: Principals) {
            for user in principals.users {
                if let uid = UInt32(user) { uids.insert(uid) } else if let uid = Self.uid(user) { uids.insert(uid) }
            }
            for group in principals.groups {
                if let gid = UInt32(group) { gids.insert(gid) } else if let gid = Self.gid(group) { gids.insert(gid) }
            }
        }

        func matches(_ peer: PeerCredentials) -> Bool {
            uids.contains(peer.uid) || gids.contains(peer.gid) || (peer.groups?.contains { gids.contains($0) } ?? false)
        }

        static func uid(_ name: String) -> UInt32? {
            var buffer = [CChar](repeating: 0, count: 16_384)
            var passwd = Glibc.passwd()
            var found: UnsafeMutablePointer<Glibc.passwd>?
            guard getpwnam_r(name, &passwd, &buffer, buffer.count, &found) == 0, found != nil else { return nil }
            return passwd.pw_uid
        }

        static func gid(_ name: String) -> UInt32? {
            var buffer = [CChar](repeating: 0, count: 16_384)
            var group = Glibc.group()
            var found: UnsafeMutablePointer<Glibc.group>?
            guard getgrnam_r(name, &group, &buffer, buffer.count, &found) == 0, found != nil else { return nil }
            return group.gr_gid
        }
    }

    struct Table: Sendable {
        var admin: Resolved
        var contexts: [(rule: AccessRules.Rule, principals: Resolved)]

        init(_ rules: AccessRules) {
            admin = Resolved(rules.admin)
            contexts = rules.contexts.map { ($0, Resolved($0.principals)) }
        }
    }

    private let table: Mutex<Table>

    public init(rules: AccessRules) {
        table = Mutex(Table(rules))
    }

    /// New rules (a configuration reload), resolved now; connections keep going.
    public func update(_ rules: AccessRules) {
        let resolved = Table(rules)
        table.withLock { $0 = resolved }
    }

    public func isAdmin(_ peer: PeerCredentials) -> Bool {
        table.withLock { $0.admin.matches(peer) }
    }

    /// Whether the caller may use (get, sign, renew, watch) `context`.
    public func mayUse(_ peer: PeerCredentials, _ context: String) -> Bool {
        table.withLock { table in
            table.admin.matches(peer) || table.contexts.contains { $0.rule.matches(context) && $0.principals.matches(peer) }
        }
    }
}
