"""The one inference path users get (level in, codes, level back), the bitstream, file
encode/decode, and where a model comes from."""
