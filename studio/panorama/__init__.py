"""360° panoramas: projections, view plans, colour matching, the LDR to HDR step, cubemaps and pan videos."""
