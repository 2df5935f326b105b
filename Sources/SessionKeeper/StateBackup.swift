import BunqCrypto
import Foundation
import GRDB

/// Online backup and restore of the embedded SQLite state. A backup is SQLite's backup API run in one step (one
/// read transaction: a consistent snapshot however the daemon writes meanwhile, and the daemon is never blocked
/// under WAL), written to a temporary file next to the target, checked, fsync'd and renamed into place: mode 0600,
/// every secret still sealed by the master key, which the backup does not contain. A backup without its master
/// key is useless; the key is kept elsewhere (the `master-key` credential, `state.master_key_file`).
public enum StateBackup {
    /// What a backup or restore copied.
    public struct Outcome: Sendable, Equatable {
        public let contexts: Int
        public let bytes: Int
    }

    /// Copies the state in `stateDirectory` to `file` (replacing it atomically, never leaving half a file).
    public static func backup(stateDirectory: String, to file: String) throws -> Outcome {
        let source = stateDirectory + "/" + StateStore.fileName
        guard FileManager.default.fileExists(atPath: source) else {
            throw StoreError(.database, "\(stateDirectory) holds no state (\(StateStore.fileName) is missing)")
        }
        let target = URL(fileURLWithPath: file).standardizedFileURL.path
        let temporary = target + ".partial-\(getpid())"
        unlink(temporary)
        // Created private before SQLite writes a byte into it.
        let fd = open(temporary, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreError(.permissions, "cannot create \(temporary): \(String(cString: strerror(errno)))") }
        close(fd)
        do {
            var readOnly = Configuration()
            readOnly.readonly = true
            readOnly.busyMode = .timeout(10)
            let database = try DatabasePool(path: source, configuration: readOnly)
            let copy = try DatabaseQueue(path: temporary)
            try database.backup(to: copy)
            // A self-contained file: no -wal beside it, and proof that it reads back whole.
            let contexts = try copy.writeWithoutTransaction { db -> Int in
                try db.execute(sql: "PRAGMA journal_mode = DELETE")
                let check = try String.fetchOne(db, sql: "PRAGMA integrity_check") ?? "?"
                guard check == "ok" else { throw StoreError(.corrupt, "the copy of \(source) fails its integrity check: \(check)") }
                return try Int.fetchOne(db, sql: "SELECT count(*) FROM context") ?? 0
            }
            try copy.close()
            try database.close()
            try sync(temporary)
            guard rename(temporary, target) == 0 else {
                throw StoreError(.permissions, "cannot move the backup to \(target): \(String(cString: strerror(errno)))")
            }
            try sync((target as NSString).deletingLastPathComponent, directory: true)
            let bytes = (try? FileManager.default.attributesOfItem(atPath: target)[.size] as? Int) ?? 0
            return Outcome(contexts: contexts, bytes: bytes)
        } catch let error as StoreError {
            unlink(temporary)
            throw error
        } catch {
            unlink(temporary)
            throw StoreError(.database, "cannot back up \(source) to \(target)", cause: error)
        }
    }

    /// Restores `backup` as the state of `stateDirectory`, which must be empty (or hold only `master.key`, put back
    /// from where it was kept): a restore never replaces a state. The backup must open with `masterKey`; a wrong
    /// key leaves the directory as it was. Migrates an older backup to the current schema.
    public static func restore(_ backup: String, into stateDirectory: String, masterKey: SymmetricKey,
                               keySource: String) async throws -> Outcome {
        guard FileManager.default.fileExists(atPath: backup) else {
            throw StoreError(.database, "the backup \(backup) does not exist")
        }
        let present = ((try? FileManager.default.contentsOfDirectory(atPath: stateDirectory)) ?? [])
            .filter { $0 != "master.key" }
        guard present.isEmpty else {
            throw StoreError(.locked, "the state directory \(stateDirectory) is not empty (\(present.sorted().prefix(3).joined(separator: ", ")))"
                + ": a restore never replaces a state; restore into an empty directory")
        }
        try StateStore.prepareDirectory(stateDirectory)
        let target = stateDirectory + "/" + StateStore.fileName
        do {
            var readOnly = Configuration()
            readOnly.readonly = true
            let source = try DatabaseQueue(path: backup, configuration: readOnly)
            let fd = open(target, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw StoreError(.permissions, "cannot create \(target): \(String(cString: strerror(errno)))") }
            close(fd)
            let copy = try DatabaseQueue(path: target)
            try source.backup(to: copy)
            try copy.close()
            try source.close()
            try sync(target)
            // Opening it checks the key and migrates: the state a daemon will start from.
            let store = try StateStore(directory: stateDirectory, masterKey: masterKey, keySource: keySource)
            let contexts = try await store.records().count
            let bytes = (try? FileManager.default.attributesOfItem(atPath: target)[.size] as? Int) ?? 0
            return Outcome(contexts: contexts, bytes: bytes)
        } catch {
            for suffix in ["", "-wal", "-shm"] { unlink(target + suffix) }
            if let error = error as? StoreError { throw error }
            throw StoreError(.database, "cannot restore \(backup) into \(stateDirectory)", cause: error)
        }
    }

    private static func sync(_ path: String, directory: Bool = false) throws {
        let fd = open(path, (directory ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else { throw StoreError(.permissions, "cannot open \(path) to sync it: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw StoreError(.database, "fsync of \(path) failed: \(String(cString: strerror(errno)))") }
    }
}
