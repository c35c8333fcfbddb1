from cmbunet.imageio.reader_writer import SimpleITKIO, ImageProperties, geometry_mismatch

__all__ = ["SimpleITKIO", "ImageProperties", "geometry_mismatch"]
