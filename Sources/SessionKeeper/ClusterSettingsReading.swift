import ConfigFile
import Foundation

/// `cluster:` as the file gives it.
extension ClusterSettings: ConfigSection {
    public static let configKeys: [ConfigKeys] = [.mapping("cluster", ["instance", "egress_group", "lease_seconds"])]

    /// This daemon's place among its peers, with a PostgreSQL store; nil (and no section allowed) with SQLite.
    public static func read(from config: ConfigReader, backend: StateBackendKind) throws(ConfigurationError) -> ClusterSettings? {
        guard backend == .postgresql else {
            if config.node(["cluster"]).map({ !$0.isNull }) == true {
                throw config.fail("cluster", "is only read with state.backend: postgresql (one daemon owns an SQLite state)")
            }
            return nil
        }
        let instance = try config.string(["cluster", "instance"]) ?? hostname
        guard isClusterName(instance) else {
            throw config.fail("cluster.instance", "must be 1 to 64 letters, digits, '.', '_' or '-', not '\(instance)'")
        }
        let egressGroup = try config.string(["cluster", "egress_group"]) ?? instance
        guard isClusterName(egressGroup) else {
            throw config.fail("cluster.egress_group", "must be 1 to 64 letters, digits, '.', '_' or '-', not '\(egressGroup)'")
        }
        let leaseSeconds = try config.int(["cluster", "lease_seconds"], default: 30, range: 3...3_600)
        return ClusterSettings(instance: instance, egressGroup: egressGroup, leaseSeconds: Double(leaseSeconds))
    }

    /// The kernel's hostname (no resolver involved: a start must not wait for DNS).
    static var hostname: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A cluster member's or egress group's name: plain, so it can never smuggle anything into a log or a query.
    static func isClusterName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count) && name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0)
        }
    }
}
