// Why we keep this: SkiaSharp cannot write PNG text chunks, and A1111's parameters live in one (docs/libraries.md).
using System.IO.Compression;
using System.Text;
using SdLora.IO;

namespace SdLora.Imaging;

/// <summary>
/// Writes 8-bit RGB PNGs with text chunks (A1111 keeps the generation settings in a <c>parameters</c>
/// chunk) and reads those chunks back. Our own encoder, because the image libraries here cannot write text chunks.
/// </summary>
public static class PngFile
{
    private static readonly byte[] Signature = [137, 80, 78, 71, 13, 10, 26, 10];

    /// <summary>Writes <paramref name="image"/> atomically, with each text entry as a tEXt chunk (iTXt when not Latin-1).</summary>
    public static void Write(string path, RgbImage image, IReadOnlyDictionary<string, string>? text = null)
    {
        AtomicFile.Write(path, s => Encode(s, image, text));
    }

    public static void Encode(Stream s, RgbImage image, IReadOnlyDictionary<string, string>? text = null)
    {
        s.Write(Signature);
        var ihdr = new byte[13];
        WriteBigEndian(ihdr, 0, (uint)image.Width);
        WriteBigEndian(ihdr, 4, (uint)image.Height);
        ihdr[8] = 8;  // bit depth
        ihdr[9] = 2;  // colour type: RGB
        WriteChunk(s, "IHDR", ihdr);
        foreach (var (key, value) in text ?? new Dictionary<string, string>())
            WriteChunk(s, IsLatin1(value) && IsLatin1(key) ? "tEXt" : "iTXt", TextChunkData(key, value));

        using var raw = new MemoryStream();
        using (var z = new ZLibStream(raw, CompressionLevel.Optimal, leaveOpen: true))
        {
            int stride = image.Width * 3;
            var prev = new byte[stride];
            var line = new byte[stride + 1];
            for (int y = 0; y < image.Height; y++)
            {
                var row = image.Pixels.AsSpan(y * stride, stride);
                // Filter 2 ("Up"): smooth generated images compress noticeably better than unfiltered.
                line[0] = 2;
                for (int i = 0; i < stride; i++) line[i + 1] = (byte)(row[i] - prev[i]);
                z.Write(line);
                row.CopyTo(prev);
            }
        }
        WriteChunk(s, "IDAT", raw.ToArray());
        WriteChunk(s, "IEND", []);
    }

    /// <summary>Reads the tEXt / iTXt / zTXt chunks of a PNG file.</summary>
    public static Dictionary<string, string> ReadText(string path)
    {
        var result = new Dictionary<string, string>();
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 8 || !bytes.AsSpan(0, 8).SequenceEqual(Signature))
            throw new SdLoraException($"{path}: not a PNG file");
        int pos = 8;
        while (pos + 8 <= bytes.Length)
        {
            int len = (int)ReadBigEndian(bytes, pos);
            string type = Encoding.ASCII.GetString(bytes, pos + 4, 4);
            if (len < 0 || pos + 12 + len > bytes.Length) throw new SdLoraException($"{path}: truncated PNG chunk '{type}'");
            var data = bytes.AsSpan(pos + 8, len);
            int nul = data.IndexOf((byte)0);
            if (nul > 0)
            {
                string key = Encoding.Latin1.GetString(data[..nul]);
                if (type == "tEXt") result[key] = Encoding.Latin1.GetString(data[(nul + 1)..]);
                else if (type == "zTXt") result[key] = Encoding.Latin1.GetString(Inflate(data[(nul + 2)..]));
                else if (type == "iTXt")
                {
                    bool compressed = data[nul + 1] != 0;
                    var rest = data[(nul + 3)..];
                    int langEnd = rest.IndexOf((byte)0);
                    rest = rest[(langEnd + 1)..];
                    int transEnd = rest.IndexOf((byte)0);
                    rest = rest[(transEnd + 1)..];
                    result[key] = Encoding.UTF8.GetString(compressed ? Inflate(rest) : rest.ToArray());
                }
            }
            if (type == "IEND") break;
            pos += 12 + len;
        }
        return result;
    }

    private static byte[] Inflate(ReadOnlySpan<byte> data)
    {
        using var z = new ZLibStream(new MemoryStream(data.ToArray()), CompressionMode.Decompress);
        using var o = new MemoryStream();
        z.CopyTo(o);
        return o.ToArray();
    }

    private static byte[] TextChunkData(string key, string value)
    {
        if (IsLatin1(value) && IsLatin1(key))
            return [.. Encoding.Latin1.GetBytes(key), 0, .. Encoding.Latin1.GetBytes(value)];
        // iTXt: keyword, NUL, compression flag 0, method 0, empty language tag, NUL, empty translated keyword, NUL, UTF-8 text.
        return [.. Encoding.Latin1.GetBytes(key), 0, 0, 0, 0, 0, .. Encoding.UTF8.GetBytes(value)];
    }

    private static bool IsLatin1(string s) => s.All(c => c <= 0xFF);

    private static void WriteChunk(Stream s, string type, byte[] data)
    {
        var header = new byte[8];
        WriteBigEndian(header, 0, (uint)data.Length);
        Encoding.ASCII.GetBytes(type, 0, 4, header, 4);
        s.Write(header);
        s.Write(data);
        uint crc = Crc32.Update(Crc32.Update(0xFFFFFFFFu, header.AsSpan(4, 4)), data) ^ 0xFFFFFFFFu;
        var c = new byte[4];
        WriteBigEndian(c, 0, crc);
        s.Write(c);
    }

    private static void WriteBigEndian(byte[] b, int at, uint v)
    {
        b[at] = (byte)(v >> 24); b[at + 1] = (byte)(v >> 16); b[at + 2] = (byte)(v >> 8); b[at + 3] = (byte)v;
    }

    private static uint ReadBigEndian(byte[] b, int at) => (uint)(b[at] << 24 | b[at + 1] << 16 | b[at + 2] << 8 | b[at + 3]);

    private static class Crc32
    {
        private static readonly uint[] Table = Enumerable.Range(0, 256).Select(n =>
        {
            uint c = (uint)n;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            return c;
        }).ToArray();

        public static uint Update(uint crc, ReadOnlySpan<byte> data)
        {
            foreach (var b in data) crc = Table[(crc ^ b) & 0xFF] ^ (crc >> 8);
            return crc;
        }
    }
}
