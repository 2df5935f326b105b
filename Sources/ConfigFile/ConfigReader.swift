import Foundation
import Yams

/// One configuration file, read: its YAML with the environment's overrides on top. Every scalar key can be
/// overridden by `BUNQ_SESSIOND_` + its path in upper snake case (`BUNQ_SESSIOND_SOCKET_PATH`); secrets can come
/// from `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`). Each section's type builds itself from it; the reader
/// only knows YAML, the overrides and how to word a refusal.
public struct ConfigReader {
    public let file: String
    let root: Node
    public let environment: [String: String]

    /// Reads and parses `file`. An empty or comment-only file is refused.
    public static func load(file: String, environment: [String: String]) throws(ConfigurationError) -> ConfigReader {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ConfigurationError(file: file, key: "(file)", reason: "cannot be read")
        }
        let composed: Node?
        do {
            composed = try Yams.compose(yaml: String(decoding: data, as: UTF8.self))
        } catch {
            throw ConfigurationError(file: file, key: "(syntax)", reason: "is not valid YAML: \(Self.describe(error))")
        }
        // An empty or comment-only file is a mistake (a truncated write, a wrong path), never "no identities":
        // running with none must be said explicitly, `api_keys: []`.
        guard let root = composed, root.mapping.map({ !$0.isEmpty }) ?? true else {
            throw ConfigurationError(file: file, key: "(file)", reason: "is empty (or only comments); "
                + "to run with no API-key identities, say so: api_keys: []")
        }
        return ConfigReader(file: file, root: root, environment: environment)
    }

    public func fail(_ key: String, _ reason: String) -> ConfigurationError {
        ConfigurationError(file: file, key: key, reason: reason)
    }

    /// `$CREDENTIALS_DIRECTORY`, when systemd passed credentials.
    public var credentialsDirectory: String? {
        environment["CREDENTIALS_DIRECTORY"].flatMap { $0.isEmpty ? nil : $0 }
    }

    public static func environmentName(_ path: [String]) -> String {
        "BUNQ_SESSIOND_" + path.joined(separator: "_").uppercased()
    }

    /// Whether the file or the environment gives `path` a value (a YAML null is no value).
    public func isGiven(_ path: [String]) -> Bool {
        environment[Self.environmentName(path)] != nil || node(path).map { !$0.isNull } == true
    }

    /// The value at `path` in the file, overrides aside.
    public func node(_ path: [String]) -> ConfigNode? {
        var current: Node? = root
        for key in path { current = current?.mapping?[Node(key)] }
        return current.map { ConfigNode(node: $0, key: path.joined(separator: ".")) }
    }

    /// A scalar: the environment override, else the YAML value, else nil.
    public func string(_ path: [String]) throws(ConfigurationError) -> String? {
        if let value = environment[Self.environmentName(path)] { return value }
        guard let node = node(path), !node.isNull else { return nil }
        guard let scalar = node.scalar else { throw fail(path.joined(separator: "."), "must be a single value") }
        return scalar
    }

    public func int(_ path: [String], default value: Int, range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let text = try string(path) else { return value }
        guard let number = Int(text), range.contains(number) else {
            throw fail(path.joined(separator: "."), "must be a whole number from \(range.lowerBound) to \(range.upperBound), not '\(text)'")
        }
        return number
    }

    /// A list of strings: YAML sequence, or a comma-separated environment override.
    public func strings(_ path: [String]) throws(ConfigurationError) -> [String] {
        if let value = environment[Self.environmentName(path)] {
            return value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        guard let node = node(path), !node.isNull else { return [] }
        guard let sequence = node.list else { throw fail(path.joined(separator: "."), "must be a list") }
        var values: [String] = []
        for item in sequence {
            guard let scalar = item.scalar else { throw fail(path.joined(separator: "."), "must be a list of strings") }
            values.append(scalar)
        }
        return values
    }

    /// A duration in seconds: a number of seconds, or a number with `ms`, `s` or `m`.
    public static func seconds(_ text: String) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        for (suffix, scale) in [("ms", 0.001), ("s", 1.0), ("m", 60.0)] where trimmed.hasSuffix(suffix) {
            return Double(trimmed.dropLast(suffix.count)).map { $0 * scale }.flatMap { $0.isFinite ? $0 : nil }
        }
        return Double(trimmed).flatMap { $0.isFinite ? $0 : nil }
    }

    /// A file's contents, for a secret or a certificate the key names; the error names the key and the path,
    /// never the contents.
    public func readSecret(_ key: String, path: String) throws(ConfigurationError) -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw fail(key, "the file \(path) cannot be read")
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Refuses sections and keys that none of `known` reads.
    public func checkKeys(_ known: [ConfigKeys]) throws(ConfigurationError) {
        guard let mapping = root.mapping else {
            if root.isNull { return }
            throw fail("(root)", "must be a mapping of sections")
        }
        let sections = Dictionary(known.map { ($0.section, $0) }, uniquingKeysWith: { first, _ in first })
        for (key, value) in mapping {
            let name = key.string ?? "?"
            guard let section = sections[name] else {
                throw fail(name, "is not a known section (known: \(sections.keys.sorted().joined(separator: ", ")))")
            }
            guard case .mapping(_, let keys) = section, !value.isNull else { continue }
            guard let entries = value.mapping else { throw fail(name, "must be a mapping") }
            for (subkey, _) in entries where !keys.contains(subkey.string ?? "?") {
                throw fail("\(name).\(subkey.string ?? "?")", "is not a known key")
            }
        }
    }

    /// A YAML error by its position and problem only: libyaml's own description quotes the file's bytes, which
    /// may hold a secret pasted in the wrong place.
    static func describe(_ error: any Error) -> String {
        guard let error = error as? YamlError else { return "unreadable" }
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
             .composer(_, let problem, let mark, _):
            return "line \(mark.line), column \(mark.column): \(problem)"
        case .reader(let problem, let offset, _, _):
            return "\(problem)" + (offset.map { " at byte \($0)" } ?? "")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return "line \(context.mark.line), column \(context.mark.column): duplicated keys \(duplicates.joined(separator: ", "))"
        default:
            return "unreadable YAML"
        }
    }
}

/// A value in the file, for sections whose shape is more than scalars (a list of mappings, a mapping of
/// patterns): its dotted key, for errors, and its YAML shape.
public struct ConfigNode {
    let node: Node
    /// Where it is, as an error names it (`access.contexts`).
    public let key: String

    /// A YAML null (`~`, `null`, or nothing) in plain style.
    public var isNull: Bool { node.isNull }
    public var scalar: String? { node.scalar?.string }
    public var list: [ConfigNode]? {
        node.sequence.map { items in items.enumerated().map { ConfigNode(node: $1, key: "\(key)[\($0)]") } }
    }
    /// The entries of a mapping in the file's order, keys as text.
    public var entries: [(key: String, value: ConfigNode)]? {
        node.mapping.map { mapping in
            mapping.map { entry in
                let name = entry.key.string ?? "?"
                return (name, ConfigNode(node: entry.value, key: "\(key).\(name)"))
            }
        }
    }
    /// One entry of a mapping, by its key.
    public subscript(_ name: String) -> ConfigNode? {
        node.mapping?[Node(name)].map { ConfigNode(node: $0, key: "\(key).\(name)") }
    }
}

extension Node {
    /// A YAML null (`~`, `null`, or nothing) in plain style.
    var isNull: Bool {
        guard case .scalar(let scalar) = self, scalar.style == .plain else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }
}
