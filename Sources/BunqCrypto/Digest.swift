import COpenSSL

/// SHA-256, for values that are stored only to be recognised again (an OAuth `state`): the store keeps the digest,
/// never the value.
public enum Digest {
    public static func sha256Hex(_ bytes: some Collection<UInt8>) -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let input = Array(bytes)
        let ok = input.withUnsafeBufferPointer { buffer in
            EVP_Digest(buffer.baseAddress, buffer.count, &digest, &length, EVP_sha256(), nil) == 1
        }
        // EVP_Digest with SHA-256 fails only when OpenSSL cannot allocate: there is no state to go on with.
        precondition(ok && length == 32, "SHA-256 failed")
        return digest.map { String($0 >> 4, radix: 16) + String($0 & 0xf, radix: 16) }.joined()
    }
}
