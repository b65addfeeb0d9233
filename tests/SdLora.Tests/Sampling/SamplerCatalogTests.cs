using SdLora.Sampling;
using Xunit;

namespace SdLora.Tests.Sampling;

public sealed class SamplerCatalogTests
{
    [Theory]
    [InlineData("Euler a", "euler_a")]
    [InlineData("Euler", "euler")]
    [InlineData("DDIM", "ddim")]
    [InlineData("DPM++ 2M", "dpmpp_2m")]
    [InlineData("DPM++ 2M Karras", "dpmpp_2m_karras")]
    [InlineData("LMS", "lms")]
    [InlineData("PLMS", "plms")]
    [InlineData("Heun", "heun")]
    [InlineData("DDPM", "ddpm")]
    public void A1111_names_and_short_forms_round_trip(string a1111, string shortName)
    {
        Assert.Equal(shortName, SamplerCatalog.ShortName(a1111));
        Assert.Equal(a1111, SamplerCatalog.A1111Name(shortName));
        Assert.Equal(a1111, SamplerCatalog.Get(shortName).Name);
        Assert.Equal(shortName, SamplerCatalog.Get(a1111).ShortName);
        Assert.Equal(a1111, SamplerCatalog.Get(a1111.ToUpperInvariant()).Name);
        Assert.Equal(a1111, SamplerCatalog.Get(shortName.ToUpperInvariant()).Name);
    }

    [Fact]
    public void Names_lists_every_sampler_once()
    {
        Assert.Equal(["Euler a", "Euler", "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "LMS", "PLMS", "Heun", "DDPM"], SamplerCatalog.Names);
        Assert.Equal(SamplerCatalog.Names, SamplerCatalog.Names.Select(n => SamplerCatalog.Get(n).Name));
    }

    [Theory]
    [InlineData("pndm", "PLMS")]
    [InlineData("euler_ancestral", "Euler a")]
    [InlineData("k_euler_a", "Euler a")]
    [InlineData("k_euler_ancestral", "Euler a")]
    [InlineData("k_euler", "Euler")]
    [InlineData("k_dpmpp_2m", "DPM++ 2M")]
    [InlineData("k_dpmpp_2m_karras", "DPM++ 2M Karras")]
    [InlineData("k_lms", "LMS")]
    [InlineData("k_heun", "Heun")]
    [InlineData("  euler a ", "Euler a")]
    public void Aliases_resolve(string alias, string a1111) => Assert.Equal(a1111, SamplerCatalog.Get(alias).Name);

    [Fact]
    public void Unknown_sampler_name_lists_the_valid_names()
    {
        var e = Assert.Throws<SdLoraException>(() => SamplerCatalog.Get("UniPC"));
        Assert.Equal("unknown sampler 'UniPC': use one of \"Euler a\", \"Euler\", \"DDIM\", \"DPM++ 2M\", \"DPM++ 2M Karras\", \"LMS\", \"PLMS\", \"Heun\", \"DDPM\" "
            + "(or euler_a, euler, ddim, dpmpp_2m, dpmpp_2m_karras, lms, plms, heun, ddpm)", e.Message);
        Assert.False(SamplerCatalog.TryGet("UniPC", out _));
    }
}
