import BunqCrypto
import Foundation

/// The key that seals every secret at rest.
public enum MasterKey {
    /// Where `load` takes the key from, for messages: the credential's path or the key file's.
    public static func source(credentialsDirectory: String?, stateDirectory: String, file: String? = nil) -> String {
        if let credentialsDirectory, FileManager.default.fileExists(atPath: credentialsDirectory + "/master-key") {
            return credentialsDirectory + "/master-key"
        }
        return file ?? stateDirectory + "/master.key"
    }

    /// The key from the systemd credential `master-key` (32 raw bytes or 64 hex characters) when
    /// `$CREDENTIALS_DIRECTORY` has one; else `master.key` in the state directory, generated (0600, fsync'd with
    /// its directory) on first use. A missing key beside an existing state is an error, never a new key. A
    /// configured `file` (`state.master_key_file`) is read and never generated: a key shared by several daemons
    /// must come from the operator.
    public static func load(credentialsDirectory: String?, stateDirectory: String, file: String? = nil) throws -> SymmetricKey {
        if let credentialsDirectory {
            let path = credentialsDirectory + "/master-key"
            if FileManager.default.fileExists(atPath: path) {
                return try parse(try read(path), source: path)
            }
        }
        if let file {
            guard FileManager.default.fileExists(atPath: file) else {
                throw StoreError(.masterKey, "the master key \(file) (state.master_key_file) does not exist: create it "
                    + "(32 random bytes, or 64 hex characters, mode 0600), the same on every daemon of the store")
            }
            try requirePrivate(file)
            return try parse(try read(file), source: file)
        }
        try StateStore.prepareDirectory(stateDirectory)
        let path = stateDirectory + "/master.key"
        if FileManager.default.fileExists(atPath: path) {
            try requirePrivate(path)
            return try parse(try read(path), source: path)
        }
        // A new key could not open what the old one sealed: a state without its key is an operator's problem to
        // solve (restore the key), never one to paper over.
        let database = stateDirectory + "/" + StateStore.fileName
        if FileManager.default.fileExists(atPath: database) {
            throw StoreError(.masterKey, "the master key \(path) is missing, but the state \(database) exists: "
                + "restore the key file (or the master-key credential); a new key could not decrypt the state")
        }
        let key = try SymmetricKey.generate()
        // O_EXCL: never overwrite a key another process just wrote; 0600 from the first byte.
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw StoreError(.masterKey, "cannot create the master key file \(path): \(String(cString: strerror(errno)))")
        }
        let bytes = key.rawBytes
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced else {
            unlink(path)
            throw StoreError(.masterKey, "cannot write the master key file \(path)")
        }
        // The key's directory entry must survive a power loss too.
        let directory = open(stateDirectory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            _ = fsync(directory)
            close(directory)
        }
        return key
    }

    private static func read(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StoreError(.masterKey, "cannot read the master key \(path)")
        }
        return Array(data)
    }

    private static func parse(_ bytes: [UInt8], source: String) throws -> SymmetricKey {
        if bytes.count == SymmetricKey.byteCount { return try SymmetricKey(bytes: bytes) }
        let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if text.count == 64, let decoded = hexBytes(text) { return try SymmetricKey(bytes: decoded) }
        throw StoreError(.masterKey, "the master key \(source) must be 32 bytes or 64 hex characters (it has \(bytes.count) bytes)")
    }

    private static func hexBytes(_ text: String) -> [UInt8]? {
        var bytes: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            guard let byte = UInt8(text[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        return bytes
    }

    /// Refuses a key file others can read.
    static func requirePrivate(_ path: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else { throw StoreError(.permissions, "cannot stat \(path)") }
        guard info.st_mode & 0o077 == 0 else {
            throw StoreError(.permissions, "\(path) is readable by others (mode \(String(info.st_mode & 0o777, radix: 8))); "
                + "chmod 600 it")
        }
    }
}
