using System.Buffers.Binary;
using System.Text;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class TensorBoardEventsTests
{
    /// <summary>
    /// Reads back the scalars of a TensorBoard events file by hand: TFRecord framing (u64 length, u32 crc, payload,
    /// u32 crc) around protobuf <c>Event</c> messages (2 = step, 5 = Summary{1 = Value{1 = tag, 2 = simple_value}}).
    /// </summary>
    internal static List<(string Tag, long Step, float Value)> ReadScalars(string file)
    {
        var bytes = File.ReadAllBytes(file);
        var result = new List<(string, long, float)>();
        for (int pos = 0; pos < bytes.Length;)
        {
            int length = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(pos)));
            var ev = bytes.AsSpan(pos + 12, length).ToArray();
            pos += 12 + length + 4;
            long step = 0;
            var values = new List<(string, float)>();
            foreach (var (field, _, data, varint) in Fields(ev))
            {
                if (field == 2) step = (long)varint;
                if (field != 5) continue;
                foreach (var (vf, _, value, _) in Fields(data!))
                {
                    if (vf != 1) continue;
                    string tag = ""; float simple = float.NaN;
                    foreach (var (f, _, d, _) in Fields(value!))
                    {
                        if (f == 1) tag = Encoding.UTF8.GetString(d!);
                        if (f == 2) simple = BinaryPrimitives.ReadSingleLittleEndian(d!);
                    }
                    values.Add((tag, simple));
                }
            }
            result.AddRange(values.Select(v => (v.Item1, step, v.Item2)));
        }
        return result;
    }

    private static IEnumerable<(int Field, int WireType, byte[]? Data, ulong Varint)> Fields(byte[] message)
    {
        int pos = 0;
        ulong Varint()
        {
            ulong v = 0;
            for (int shift = 0; ; shift += 7) { byte b = message[pos++]; v |= (ulong)(b & 0x7F) << shift; if (b < 0x80) return v; }
        }
        while (pos < message.Length)
        {
            ulong key = Varint();
            int field = (int)(key >> 3), wire = (int)(key & 7);
            switch (wire)
            {
                case 0: yield return (field, wire, null, Varint()); break;
                case 1: yield return (field, wire, message[pos..(pos + 8)], 0); pos += 8; break;
                case 2: { int n = (int)Varint(); yield return (field, wire, message[pos..(pos + n)], 0); pos += n; break; }
                case 5: yield return (field, wire, message[pos..(pos + 4)], 0); pos += 4; break;
                default: throw new InvalidDataException($"wire type {wire} in an events file");
            }
        }
    }

    [Fact]
    public void Each_scalar_is_logged_under_its_own_tag_at_its_step()
    {
        using var tmp = Fixtures.TempDir();
        using (var tb = new TensorBoardLog(tmp.File("logs")))
            for (int s = 1; s <= 3; s++) tb.Write(new LossRow(s, 0, Loss: 0.5 + s, SmoothedLoss: 0.25 * s, Lr: 1e-4 * s, Seconds: s));
        var file = Assert.Single(Directory.GetFiles(tmp.File("logs"), "events.out.tfevents*", SearchOption.AllDirectories));
        var scalars = ReadScalars(file);
        for (int s = 1; s <= 3; s++)
        {
            Assert.Contains(("loss/current", (long)s, (float)(0.5 + s)), scalars);
            Assert.Contains(("loss/average", (long)s, (float)(0.25 * s)), scalars);
            Assert.Contains(("lr", (long)s, (float)(1e-4 * s)), scalars);
        }
        Assert.Equal(9, scalars.Count);
    }
}
