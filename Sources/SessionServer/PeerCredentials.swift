import Foundation
import NIOCore
import SessionKeeper
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The process on the other end of a connection, from `SO_PEERCRED`: the kernel's word, not the client's.
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    public let pid: Int32
    public let uid: UInt32
    public let gid: UInt32

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }

    static func read(_ channel: any Channel) -> EventLoopFuture<PeerCredentials> {
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
        }
        let future: EventLoopFuture<UCred> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        return future.map { PeerCredentials(pid: $0.pid, uid: $0.uid, gid: $0.gid) }
    }

    /// `struct ucred` (socket(7)), which Glibc exposes only under _GNU_SOURCE: same layout.
    struct UCred: Sendable {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }

    /// The systemd unit the process runs in, from `/proc/PID/cgroup`, when readable.
    var unit: String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8) else { return nil }
        let path = text.split(separator: "\n").first { $0.hasPrefix("0::") }?.dropFirst(3) ?? ""
        return path.split(separator: "/").last { $0.hasSuffix(".service") || $0.hasSuffix(".scope") }.map(String.init)
    }
}

/// Decides, per caller, from the configured `access:` rules. A caller's groups are its primary group and the
/// supplementary groups of its uid's user, resolved through NSS and cached for a minute.
public final class AccessControl: Sendable {
    struct Caller: Sendable {
        let userName: String?
        let groupIds: Set<UInt32>
        let groupNames: Set<String>
        let resolvedAt: Date
    }

    private let rules: Mutex<AccessRules>
    private let callers = Mutex<[String: Caller]>([:])

    public init(rules: AccessRules) {
        self.rules = Mutex(rules)
    }

    /// New rules (a configuration reload); connections keep going.
    public func update(_ rules: AccessRules) {
        self.rules.withLock { $0 = rules }
        callers.withLock { $0.removeAll() }
    }

    public func isAdmin(_ peer: PeerCredentials) -> Bool {
        matches(rules.withLock { $0.admin }, peer)
    }

    /// Whether the caller may use (get, sign, renew, watch) `context`.
    public func mayUse(_ peer: PeerCredentials, _ context: String) -> Bool {
        if isAdmin(peer) { return true }
        let applicable = rules.withLock { $0.contexts.filter { $0.matches(context) } }
        return applicable.contains { matches($0.principals, peer) }
    }

    private func matches(_ principals: Principals, _ peer: PeerCredentials) -> Bool {
        let caller = resolve(peer)
        if principals.users.contains(where: { $0 == String(peer.uid) || $0 == caller.userName }) { return true }
        return principals.groups.contains { group in
            caller.groupNames.contains(group) || UInt32(group).map(caller.groupIds.contains) == true
        }
    }

    private func resolve(_ peer: PeerCredentials) -> Caller {
        let key = "\(peer.uid):\(peer.gid)"
        if let cached = callers.withLock({ $0[key] }), cached.resolvedAt.timeIntervalSinceNow > -60 { return cached }
        // The reentrant NSS calls: event loops on several threads may resolve at once.
        var groupIds: Set<UInt32> = [peer.gid]
        var userName: String?
        var buffer = [CChar](repeating: 0, count: 16_384)
        var passwd = Glibc.passwd()
        var found: UnsafeMutablePointer<Glibc.passwd>?
        if getpwuid_r(peer.uid, &passwd, &buffer, buffer.count, &found) == 0, found != nil {
            userName = String(cString: passwd.pw_name)
            var count: Int32 = 256
            var groups = [gid_t](repeating: 0, count: Int(count))
            if getgrouplist(passwd.pw_name, peer.gid, &groups, &count) >= 0 {
                groupIds.formUnion(groups.prefix(Int(count)))
            }
        }
        let groupNames = Set(groupIds.compactMap { gid -> String? in
            var group = Glibc.group()
            var result: UnsafeMutablePointer<Glibc.group>?
            guard getgrgid_r(gid, &group, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
            return String(cString: group.gr_name)
        })
        let caller = Caller(userName: userName, groupIds: groupIds, groupNames: groupNames, resolvedAt: Date())
        callers.withLock { $0[key] = caller }
        return caller
    }
}
