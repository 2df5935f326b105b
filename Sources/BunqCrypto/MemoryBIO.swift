import COpenSSL
import Foundation

/// OpenSSL memory BIOs, the bridge between Swift bytes and OpenSSL's PEM readers and writers.
enum MemoryBIO {
    /// Runs `body` with a read-only BIO over `bytes`; the BIO never outlives the call.
    static func reading<T>(_ bytes: [UInt8], _ body: (OpaquePointer) throws -> T) throws -> T {
        try bytes.withUnsafeBytes { buffer in
            guard let bio = BIO_new_mem_buf(buffer.baseAddress, Int32(buffer.count)) else {
                throw CryptoError.openSSL(.internalError, "could not allocate a memory BIO")
            }
            defer { BIO_free(bio) }
            return try body(bio)
        }
    }

    /// Runs `write` against a fresh writable BIO and returns everything written to it.
    static func writing(_ failure: CryptoError.Code, _ what: String, _ write: (OpaquePointer) -> Int32) throws -> [UInt8] {
        guard let bio = BIO_new(BIO_s_mem()) else {
            throw CryptoError.openSSL(.internalError, "could not allocate a memory BIO")
        }
        defer { BIO_free(bio) }
        guard write(bio) == 1 else { throw CryptoError.openSSL(failure, "could not write \(what)") }
        let pending = Int(BIO_ctrl_pending(bio))
        var output = [UInt8](repeating: 0, count: pending)
        let read = output.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32(pending)) }
        guard read == pending else { throw CryptoError.openSSL(.internalError, "could not read back \(what)") }
        return output
    }
}
